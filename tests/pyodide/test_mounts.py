"""The mount helpers: listings and image reads that never leave the mount (pure, no Deno)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxes.pyodide import Entry, MountPathRefused, list_mounted_directory, read_image

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    """A mount with a file, an image, a sub-folder and links pointing out of it."""
    root = tmp_path / "mount"
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("hello")
    (root / "sub" / "plot.png").write_bytes(PNG)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(PNG)
    os.symlink(outside, root / "out-dir")
    os.symlink(outside / "secret.png", root / "out.png")
    return root


def test_a_listing_reports_links_as_links(mount: Path) -> None:
    assert list_mounted_directory(mount) == [
        Entry("notes.txt", "notes.txt", "file", 5),
        Entry("out-dir", "out-dir", "symlink", 0),
        Entry("out.png", "out.png", "symlink", 0),
        Entry("sub", "sub", "directory", 0),
    ]
    assert list_mounted_directory(mount, "sub") == [
        Entry("plot.png", "sub/plot.png", "file", len(PNG))
    ]


def test_an_image_inside_the_mount_is_read(mount: Path) -> None:
    image = read_image(mount, "sub/plot.png")
    assert (image.path, image.mime_type, image.data) == ("sub/plot.png", "image/png", PNG)
    assert read_image(mount, "./sub//plot.png").path == "sub/plot.png"


@pytest.mark.parametrize(
    "rel", ["../../etc/passwd", "sub/../../outside/secret.png", "/etc/passwd", "/", "C:/x.png"]
)
def test_paths_leaving_the_mount_are_refused(mount: Path, rel: str) -> None:
    with pytest.raises(MountPathRefused) as refused:
        read_image(mount, rel)
    assert (refused.value.argument, refused.value.got) == ("imagePath", rel)
    with pytest.raises(MountPathRefused) as listing:
        list_mounted_directory(mount, rel)
    assert listing.value.argument == "path"


@pytest.mark.parametrize("rel", ["out.png", "out-dir/secret.png"])
def test_symlinks_out_of_the_mount_are_refused(mount: Path, rel: str) -> None:
    with pytest.raises(MountPathRefused) as refused:
        read_image(mount, rel)
    assert "without symbolic links" in refused.value.expected
    with pytest.raises(MountPathRefused):
        list_mounted_directory(mount, "out-dir")


@pytest.mark.parametrize(
    ("rel", "content", "expected"),
    [
        ("notes.txt", None, "an image file"),
        ("fake.png", b"not a png at all", "a file whose content is image/png"),
        ("missing.png", None, "an existing file inside the mount"),
        ("sub", None, "an image file"),
    ],
)
def test_non_images_are_refused(
    mount: Path, rel: str, content: bytes | None, expected: str
) -> None:
    if content is not None:
        (mount / rel).write_bytes(content)
    with pytest.raises(MountPathRefused) as refused:
        read_image(mount, rel)
    assert refused.value.expected.startswith(expected)
    assert str(refused.value).startswith(f"imagePath: expected {expected}")
