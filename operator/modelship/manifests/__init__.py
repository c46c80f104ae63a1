"""Pure builders: (ModelDeployment, resolved model, placement, settings) -> child objects, as
dicts. No I/O and no Kubernetes client here.

- `meta`: names, labels, annotations and owner references every child shares;
- `pods`: security contexts, scheduling, flags;
- `tgi`, `vllm`, `sglang`, `llamacpp`: one module per engine, its image and command line;
- `serving`: the engine's Deployment and the Service;
- `volume`: the weights' PersistentVolumeClaim;
- `jobs`: the download and collection Jobs.
"""

from .jobs import VOLUME_FULL_EXIT, collect_job, download_job, file_spec
from .llamacpp import args as llamacpp_args
from .meta import (APPLIED_HASH, CLAIM_LABEL, COMPONENT, DEPLOYMENT_LABEL, KEEP, MANAGED_BY, REPO, REVISION,
                   SHARED_CACHE, SHARED_CLAIM, SNAPSHOT_PREFIX, SPEC_HASH, WEIGHTS_BYTES, claim_label, claim_name,
                   digest, field_manager_of, ledger_annotation, on_shared_cache, owned_by, selector_string,
                   service_url, shares_volume_jobs, snapshot_key)
from .pods import Placement
from .serving import deployment, service
from .volume import pvc, volume_size

__all__ = [
    "APPLIED_HASH", "CLAIM_LABEL", "COMPONENT", "DEPLOYMENT_LABEL", "KEEP", "MANAGED_BY", "Placement", "REPO",
    "REVISION", "SHARED_CACHE", "SHARED_CLAIM", "SNAPSHOT_PREFIX", "SPEC_HASH", "VOLUME_FULL_EXIT", "WEIGHTS_BYTES",
    "claim_label", "claim_name", "collect_job", "deployment", "digest", "download_job", "field_manager_of",
    "file_spec", "ledger_annotation", "llamacpp_args", "on_shared_cache", "owned_by", "pvc", "selector_string",
    "service", "service_url", "shares_volume_jobs", "snapshot_key", "volume_size",
]
