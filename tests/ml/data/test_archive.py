import stat
import struct
import warnings
import zipfile

import pytest

from ml.data.archive import ArchiveError, ArchiveLimits, check_archive, safe_extract


def make_zip(path, members, compression=zipfile.ZIP_DEFLATED):
    """members: (name or ZipInfo, bytes) pairs, written in order."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def with_mode(name, mode):
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so the mode bits mean something
    info.external_attr = mode << 16
    return info


def assert_refused(tmp_path, zip_path, match, limits=None):
    dest = tmp_path / "out"
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ArchiveError, match=match):
        safe_extract(zip_path, dest, limits or ArchiveLimits())
    assert sorted(tmp_path.iterdir()) == before  # neither dest nor a staging folder is left


def test_extracts_files_and_returns_paths(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("classes.txt", b"cat\n"), ("images/a.jpg", b"jpg"), ("images/", b"")])
    paths = safe_extract(zip_path, tmp_path / "out")
    assert paths == [tmp_path / "out" / "classes.txt", tmp_path / "out" / "images" / "a.jpg"]
    assert (tmp_path / "out" / "images" / "a.jpg").read_bytes() == b"jpg"


def test_strips_single_wrapping_folder_and_ignores_macos_litter(tmp_path):
    zip_path = make_zip(
        tmp_path / "a.zip",
        [
            ("ds/classes.txt", b"cat\n"),
            ("ds/images/a.jpg", b"jpg"),
            ("ds/.DS_Store", b"junk"),
            ("__MACOSX/ds/._classes.txt", b"fork"),
        ],
    )
    paths = safe_extract(zip_path, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in paths] == ["classes.txt", "images/a.jpg"]
    assert not (tmp_path / "out" / "__MACOSX").exists()


def test_keeps_layout_when_top_level_has_files(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("ds/images/a.jpg", b"jpg"), ("readme.txt", b"hi")])
    paths = safe_extract(zip_path, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in paths] == ["ds/images/a.jpg", "readme.txt"]


def test_refuses_existing_destination(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("a.txt", b"x")])
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        safe_extract(zip_path, tmp_path / "out")


def test_not_a_zip(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(b"just some text, not an archive\n")
    assert_refused(tmp_path, path, "not a zip archive")


def test_empty_zip(tmp_path):
    assert_refused(tmp_path, make_zip(tmp_path / "a.zip", []), "archive is empty")


def test_zip_of_only_folders_and_litter_is_empty(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("ds/", b""), ("__MACOSX/._x", b"fork"), (".DS_Store", b"x")])
    assert_refused(tmp_path, zip_path, "archive is empty")


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../evil.txt", r"'\.\.' component"),
        ("images/../../evil.txt", r"'\.\.' component"),
        ("/etc/evil.txt", "absolute path"),
        ("C:/evil.txt", "drive letter"),
        ("..\\evil.txt", "backslashes"),
        ("images\\a.jpg", "backslashes"),
        ("bad\x01name.txt", "control characters"),
        ("x" * 300 + ".txt", "longer than 255 bytes"),
    ],
)
def test_unsafe_names_refused(tmp_path, name, match):
    zip_path = make_zip(tmp_path / "a.zip", [("ok.txt", b"fine"), (name, b"payload")])
    assert_refused(tmp_path, zip_path, match)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_symlink_member_refused(tmp_path):
    zip_path = make_zip(
        tmp_path / "a.zip", [("ok.txt", b"x"), (with_mode("link", stat.S_IFLNK | 0o777), b"/etc/passwd")]
    )
    assert_refused(tmp_path, zip_path, "symbolic link")


@pytest.mark.parametrize("kind", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK])
def test_special_files_refused(tmp_path, kind):
    zip_path = make_zip(tmp_path / "a.zip", [("ok.txt", b"x"), (with_mode("dev", kind | 0o644), b"")])
    assert_refused(tmp_path, zip_path, "device, pipe or socket")


def test_regular_unix_file_mode_accepted(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [(with_mode("a.txt", stat.S_IFREG | 0o644), b"x")])
    assert safe_extract(zip_path, tmp_path / "out") == [tmp_path / "out" / "a.txt"]


def test_encrypted_member_refused(tmp_path):
    # zipfile cannot write encrypted members, so set the "encrypted" flag bit in both headers.
    data = bytearray(make_zip(tmp_path / "a.zip", [("secret.txt", b"x")]).read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.find(signature) + offset] |= 0x1
    (tmp_path / "a.zip").write_bytes(bytes(data))
    assert_refused(tmp_path, tmp_path / "a.zip", "encrypted")


def test_duplicate_names_refused(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile itself warns about the duplicate it writes
        zip_path = make_zip(tmp_path / "a.zip", [("a.txt", b"one"), ("a.txt", b"two")])
    assert_refused(tmp_path, zip_path, "appears twice")


def test_duplicate_after_normalising_refused(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("images/a.jpg", b"one"), ("images/./a.jpg", b"two")])
    assert_refused(tmp_path, zip_path, "appears twice")


def test_file_and_folder_of_same_name_refused(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("images", b"file"), ("images/a.jpg", b"jpg")])
    assert_refused(tmp_path, zip_path, "both a file and a folder")


def test_too_many_members(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [(f"f{i}.txt", b"x") for i in range(6)])
    assert_refused(tmp_path, zip_path, "6 members, more than the limit of 5", ArchiveLimits(max_members=5))
    assert len(safe_extract(zip_path, tmp_path / "ok", ArchiveLimits(max_members=6))) == 6


def test_too_deep(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("a/b/c/d.txt", b"x"), ("top.txt", b"x")])
    assert_refused(tmp_path, zip_path, "nested 4 levels deep", ArchiveLimits(max_depth=3))


def test_bomb_by_ratio(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("zeros.bin", bytes(4 << 20))])
    assert_refused(tmp_path, zip_path, "expands more than 100x")


def test_small_compressible_files_pass_ratio_check(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("tags.csv", b"image,tags\n" + b"a.jpg,cat\n" * 10_000)])
    assert len(safe_extract(zip_path, tmp_path / "out")) == 1


def test_member_size_measured(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("a.bin", bytes(3000))], compression=zipfile.ZIP_STORED)
    assert_refused(tmp_path, zip_path, "more than the limit of 2048 bytes", ArchiveLimits(max_member_bytes=2048))


def test_total_size_limit(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("a.bin", bytes(3000)), ("b.bin", bytes(3000))])
    assert_refused(tmp_path, zip_path, "more than the limit of 5000 bytes", ArchiveLimits(max_total_bytes=5000))


def _patch_sizes(data: bytes, claimed: int) -> bytes:
    """Rewrite the uncompressed size in every local and central header to `claimed`."""
    data = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        while at != -1:
            data[at + offset : at + offset + 4] = struct.pack("<I", claimed)
            at = data.find(signature, at + 4)
    return bytes(data)


def test_total_size_measured_not_trusted_from_lying_header(tmp_path):
    honest = make_zip(tmp_path / "honest.zip", [("a.bin", bytes(3 << 20)), ("b.bin", bytes(3 << 20))])
    liar = tmp_path / "liar.zip"
    liar.write_bytes(_patch_sizes(honest.read_bytes(), claimed=100))
    honest.unlink()
    with zipfile.ZipFile(liar) as archive:
        assert sum(info.file_size for info in archive.infolist()) == 200  # the headers claim 200 bytes in all
    # A check of the declared sizes would pass this archive; streaming either meets the byte limit or
    # (zipfile stops at the declared size) a CRC mismatch: refused both ways.
    limits = ArchiveLimits(max_total_bytes=1 << 20, max_ratio=1e9)
    assert_refused(tmp_path, liar, "more than the limit|damaged", limits)


def test_damaged_data_refused(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("a.txt", b"hello world " * 100)])
    data = bytearray(zip_path.read_bytes())
    start = data.find(b"a.txt") + len("a.txt")
    data[start + 5 : start + 25] = b"\x00" * 20  # inside the deflated payload
    zip_path.write_bytes(bytes(data))
    assert_refused(tmp_path, zip_path, "damaged")


@pytest.mark.parametrize("compression", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_damaged_data_refused_whatever_the_compression(tmp_path, compression):
    zip_path = make_zip(tmp_path / "a.zip", [("a.txt", bytes(range(256)) * 64)], compression)
    data = bytearray(zip_path.read_bytes())
    start = data.find(b"a.txt") + len("a.txt")
    data[start + 10 : start + 40] = b"\x00" * 30  # inside the compressed payload
    zip_path.write_bytes(bytes(data))
    assert_refused(tmp_path, zip_path, "damaged")


def test_member_name_marked_utf8_but_not_refused(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("NAME.txt", b"x")])
    data = bytearray(zip_path.read_bytes().replace(b"NAME", b"\xff\xfe\xfd\xfc"))
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        data[at + flags_at + 1] |= 0x08  # bit 11 of the little-endian flags: the name is UTF-8
    zip_path.write_bytes(bytes(data))
    assert_refused(tmp_path, zip_path, "marked as UTF-8")


def test_check_archive_judges_the_listing_alone_and_extracts_nothing(tmp_path):
    good = make_zip(tmp_path / "good.zip", [("ds/classes.txt", b"cat\n"), ("ds/images/a.jpg", b"jpg"), ("ds/", b"")])
    assert check_archive(good) == 2
    escaping = make_zip(tmp_path / "escaping.zip", [("classes.txt", b"cat\n"), ("../../x.txt", b"x")])
    with pytest.raises(ArchiveError, match="'..'"):
        check_archive(escaping)
    with pytest.raises(ArchiveError, match="members"):
        check_archive(good, ArchiveLimits(max_members=2))
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(ArchiveError, match="not a zip"):
        check_archive(tmp_path / "text.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escaping.zip", "good.zip", "text.zip"]


def test_progress_follows_the_extraction_and_an_exception_from_it_leaves_nothing(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [(f"images/{i}.jpg", b"jpg") for i in range(5)])
    seen = []
    safe_extract(zip_path, tmp_path / "out", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 5) for i in range(1, 6)]

    def stop_at_three(done, _total):
        if done == 3:
            raise InterruptedError("stopped")

    with pytest.raises(InterruptedError):
        safe_extract(zip_path, tmp_path / "again", progress=stop_at_three)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]
