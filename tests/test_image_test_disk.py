"""`make image-test`'s disk rule (deploy/image_test.py: `make_room`): the build starts only with room
in podman's storage; short of it, dangling images go first, then the test's own two images, and
otherwise it stops before building with a message that says where, how much and what to do.

podman and buildah are FAKES here (`FAKE_podman` / `FAKE_buildah` scripts on PATH that log their
arguments and answer like the real tools), and the free space is injected: a storage that runs
full at a chosen moment is not something a test can make the real podman do. The real tools run
the whole rule in `make image-test` itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))
import image_test  # noqa: E402

FAKE_PODMAN = """#!/bin/sh
# FAKE_podman: logs its arguments; answers `info`, `image inspect` of the test's own tags
echo "podman $*" >> "$FAKE_LOG"
case "$1 $2" in
  "info --format") echo "$FAKE_ROOT" ;;
  "image inspect") case "$*" in *image-test*) echo "sha256:own-$(echo "$*" | md5sum | cut -c1-8)" ;; *) exit 125 ;; esac ;;
esac
exit 0
"""
FAKE_BUILDAH = """#!/bin/sh
# FAKE_buildah: one working container left from a killed smoke run on the test's image, one not
echo "buildah $*" >> "$FAKE_LOG"
if [ "$1" = containers ]; then
  echo "c0ffee localhost/i2v-worker:image-test"
  echo "beef00 docker.io/library/somebody-elses:1"
fi
exit 0
"""


@pytest.fixture
def tools(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("podman", FAKE_PODMAN), ("buildah", FAKE_BUILDAH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_ROOT", str(tmp_path / "storage"))
    monkeypatch.setattr(image_test, "MIN_FREE_GB", 24.0)
    monkeypatch.setattr(image_test, "say", lambda msg: None)
    return log


def free_space(log: Path, start: float, after_prune: float, after_rmi: float):
    """The free GiB the storage has, given which removals have run so far (read from the log)."""
    def free_gb(path: Path) -> float:
        calls = log.read_text()
        if "podman rmi" in calls:
            return after_rmi
        if "podman image prune" in calls:
            return after_prune
        return start
    return free_gb


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_with_room_nothing_is_removed_but_a_killed_runs_working_container(tools, monkeypatch):
    monkeypatch.setattr(image_test, "free_gb", free_space(tools, 60, 60, 60))
    image_test.make_room()
    log = calls(tools)
    assert "buildah rm c0ffee" in log, "the working container on the test's own image goes"
    assert not any("beef00" in c and c.startswith("buildah rm") for c in log), "somebody else's stays"
    assert not any(c.startswith(("podman image prune", "podman rmi")) for c in log)


def test_short_of_room_dangling_images_go_first_and_the_cache_stays_when_that_is_enough(tools, monkeypatch):
    monkeypatch.setattr(image_test, "free_gb", free_space(tools, 10, 30, 50))
    image_test.make_room()
    log = calls(tools)
    assert "podman image prune -f" in log
    assert not any(c.startswith("podman rmi") for c in log), "the layer cache (the test's own images) is kept"


def test_still_short_the_tests_own_images_go_next(tools, monkeypatch):
    monkeypatch.setattr(image_test, "free_gb", free_space(tools, 10, 15, 40))
    image_test.make_room()
    rmi = [c for c in calls(tools) if c.startswith("podman rmi")]
    assert rmi == [f"podman rmi {image_test.IMAGE} {image_test.BUILDER_IMAGE}"]


def test_no_room_at_all_stops_before_building_and_says_where_how_much_and_what_to_do(tools, monkeypatch, tmp_path):
    monkeypatch.setattr(image_test, "free_gb", free_space(tools, 3, 4, 5.5))
    with pytest.raises(image_test.StepFailed) as info:
        image_test.make_room()
    err = info.value
    assert err.step == "disk"
    assert str(tmp_path / "storage") in err.message and "5.5 GiB free" in err.message and "needs 24 GiB" in err.message
    assert "I2V_IMAGE_TEST_MIN_FREE_GB" in err.message and "Free space" in err.message
