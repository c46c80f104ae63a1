# modelship's image: the operator, the router and the download command (`modelship ...`).
# No registry is reachable where this project is developed, so this file is checked by
# review, not built in CI; the test bed maps `*modelship/modelship*` images to this
# checkout's own environment instead (testbed/modelship_testbed/images.yaml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 65532 --create-home modelship
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["modelship"]
