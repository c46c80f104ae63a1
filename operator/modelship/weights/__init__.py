"""What the download and collection Jobs run (`modelship fetch`, `modelship collect`).

Standard library only: this is the Jobs' program, and keeping it so keeps a slim Job image
possible (a test enforces it).

- `volume`: the Hub cache layout on the volume, who uses what, the locks;
- `fetch`: verified, resumable, parallel downloads into it;
- `hashing`: the hashes, and the writer that hashes a download as it lands;
- `collect`: snapshots nothing uses leave, then the blobs only they used.
"""

from .collect import collect, prune
from .fetch import Fetcher, download, parse_file
from .volume import USERS, VOLUME_FULL, VOLUME_FULL_EXIT, FetchError, VolumeFull, record_use, volume_lock

__all__ = ["USERS", "VOLUME_FULL", "VOLUME_FULL_EXIT", "FetchError", "VolumeFull", "Fetcher", "collect", "download", "parse_file", "prune", "record_use",
           "volume_lock"]
