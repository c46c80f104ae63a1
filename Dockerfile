# modelship's image: the operator, the router and the download command (`modelship ...`).
# No registry or container engine is reachable where this project is developed, so CI does
# not build it; tests/integration/test_image.py checks what can be checked (the base pinned,
# two stages, user 65532 as the chart runs it; the wheel of the build stage installed into a
# fresh environment as the runtime stage does, every entry point the chart and the Jobs call
# started from it). The test bed maps `*modelship/modelship*` images to this checkout's own
# environment (testbed/modelship_testbed/images.yaml).
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
RUN useradd --uid 65532 --create-home modelship
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["modelship"]
