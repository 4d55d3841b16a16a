"""weightkit.ops.verify: checksum files, shipped manifests, Meta checklists, tensor manifests."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from weightkit.catalog import checksums_dir
from weightkit.checksums import read_checksums
from weightkit.errors import InputError
from weightkit.ops.verify import verify, write_checksums
from weightkit.options import WriteOptions

ONE = b"weights one\n" * 1000
TWO = b"weights two\n" * 1000
CONFIG = b'{"dim": 8}\n'
ONE_MD5 = "6b4fddd478b41a578e24e0479285bb00"
ONE_FLIPPED_MD5 = "ede729be4935bc62e7e40acc669ba3cf"  # ONE with its last 'e' turned into 'E'
TWO_MD5 = "12802cd06b23acf90630f4eb805c8a5d"
CONFIG_MD5 = "2b3e9e8615695c0c676f67f961f199c8"
ONE_SHA256 = "1358bfc798a022556874ac1e60caee7bda4107fa30d8762aa1d8e55b3ddde9ef"
TWO_SHA256 = "588cd35984da6218acab0f7ea76477e0bef198ee137b5631118b71d00da90540"
CONFIG_SHA256 = "b9b5dc4e2da9ac84c93deb3a8bc3c64aa380535969667262c6c5a78fea794a80"

SUMS = f"{ONE_MD5}  one.bin\n{TWO_MD5}  sub/two.bin\n{CONFIG_MD5}  config.json\n"

# the numbers published with ZhiXi-13B (checksums/*.md5), copied here as the issue gives them
ZHIXI = {
    "zhixi-13b-diff": {
        "pytorch_model-00001-of-00006.bin": "83cc5089df3eb400c99d9947b8c4f97b",
        "pytorch_model-00002-of-00006.bin": "d264f13f961a0d2a5ba97c1c7f8b58e2",
        "pytorch_model-00003-of-00006.bin": "ac6d767ac50fcc0828ac860c3be4dfad",
        "pytorch_model-00004-of-00006.bin": "55736b822e100f1f0cb35e9ddb3b4471",
        "pytorch_model-00005-of-00006.bin": "0dc1f2a6d02fe7db41a6fa72c7cff138",
        "pytorch_model-00006-of-00006.bin": "c92a59383e10e2c4c3688a82856f6cba",
    },
    "zhixi-13b-diff-fp16": {
        "pytorch_model-00001-of-00003.bin": "37322209a703e24bb0b06d2742901741",
        "pytorch_model-00002-of-00003.bin": "6fcc5659bf10c2b335dc846acc6a1870",
        "pytorch_model-00003-of-00003.bin": "03ed19e6106f7228f6a5c103a8684450",
    },
    "zhixi-13b-base": {
        "pytorch_model-00001-of-00006.bin": "b19e56ec888b44bfe5c1db49eb4a3195",
        "pytorch_model-00002-of-00006.bin": "39e23c61754719cfab9c0199d9abaccb",
        "pytorch_model-00003-of-00006.bin": "e164b3a17698d7b842274aadd74567eb",
        "pytorch_model-00004-of-00006.bin": "a535e330204f68bce6245914a6d460e5",
        "pytorch_model-00005-of-00006.bin": "009a4913710db64ae94ac62dffd784c6",
        "pytorch_model-00006-of-00006.bin": "c7c5750106a5724de3f0cb7a7151723a",
    },
    "zhixi-13b-base-fp16": {
        "pytorch_model-00001-of-00003.bin": "bad379562a2ee8381683c1badd952951",
        "pytorch_model-00002-of-00003.bin": "f354f1a5a7c65ab378f03d293e9b1715",
        "pytorch_model-00003-of-00003.bin": "41a79e11206adeec872d6188cb62904a",
    },
    "zhixi-13b-lora": {"adapter_model.bin": "308f8424b1b6ac8dff343716dd78cde7"},
}


@pytest.fixture
def download(tmp_path: Path) -> Path:
    """A downloaded folder, with its publisher's md5 list saved next to it."""
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "one.bin").write_bytes(ONE)
    (folder / "sub" / "two.bin").write_bytes(TWO)
    (folder / "config.json").write_bytes(CONFIG)
    (folder / ".gitattributes").write_text("*.bin filter=lfs\n")
    (tmp_path / "sums.md5").write_text(SUMS)
    return folder


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


def verdicts(report) -> list[tuple[str, str]]:
    return [(r.name, r.verdict) for r in report.rows]


# --- md5sum / sha256sum files ----------------------------------------------------------------


def test_all_listed_files_match(download: Path) -> None:
    report = verify(download, manifest=download.parent / "sums.md5")
    assert report.ok is True
    assert report.algo == "md5"
    assert report.kind == "files"
    assert [(r.name, r.expected, r.actual, r.verdict) for r in report.rows] == [
        ("one.bin", ONE_MD5, ONE_MD5, "ok"),
        ("sub/two.bin", TWO_MD5, TWO_MD5, "ok"),
        ("config.json", CONFIG_MD5, CONFIG_MD5, "ok"),
    ]
    assert report.counts() == {"ok": 3, "MISMATCH": 0, "missing": 0, "extra": 0}
    assert report.bytes_hashed == 24011


def test_flipped_byte_is_a_mismatch_of_that_file(download: Path) -> None:
    flip(download / "one.bin", len(ONE) - 2)
    report = verify(download, manifest=download.parent / "sums.md5")
    assert report.ok is False
    assert report.rows[0].name == "one.bin"
    assert (report.rows[0].expected, report.rows[0].actual) == (ONE_MD5, ONE_FLIPPED_MD5)
    assert verdicts(report) == [
        ("one.bin", "MISMATCH"),
        ("sub/two.bin", "ok"),
        ("config.json", "ok"),
    ]


def test_missing_listed_file_fails(download: Path) -> None:
    (download / "sub" / "two.bin").unlink()
    report = verify(download, manifest=download.parent / "sums.md5")
    assert report.ok is False
    assert report.rows[1].name == "sub/two.bin"
    assert (report.rows[1].expected, report.rows[1].actual) == (TWO_MD5, None)
    assert report.rows[1].verdict == "missing"


def test_unlisted_files_are_extra_and_not_a_failure(download: Path) -> None:
    (download / "README.md").write_text("hi\n")
    (download / ".cache").mkdir()
    (download / ".cache" / "x.lock").write_text("")
    report = verify(download, manifest=download.parent / "sums.md5")
    assert report.ok is True
    assert verdicts(report)[-1] == ("README.md", "extra")
    assert report.rows[-1].expected is None and report.rows[-1].actual is None
    assert len(report.rows) == 4  # hidden .gitattributes and .cache/ are not reported


def test_sha256_is_told_from_the_hash_length(download: Path) -> None:
    sums = download.parent / "sums.sha256"
    sums.write_text(f"{ONE_SHA256}  one.bin\n{TWO_SHA256}  sub/two.bin\n")
    report = verify(download, manifest=sums)
    assert report.algo == "sha256"
    assert [r.actual for r in report.rows[:2]] == [ONE_SHA256, TWO_SHA256]
    assert verdicts(report)[:2] == [("one.bin", "ok"), ("sub/two.bin", "ok")]


def test_algo_that_does_not_fit_the_hashes_is_refused(download: Path) -> None:
    with pytest.raises(InputError) as e:
        verify(download, manifest=download.parent / "sums.md5", algo="sha256")
    assert "sums.md5: holds hashes of 32 hex digits, sha256 hashes have 64" in e.value.message
    assert e.value.hint == "Drop `algo` to tell the algorithm from the hash length."


def test_binary_marker_dot_slash_uppercase_comments_and_crlf(download: Path) -> None:
    sums = download.parent / "bin.md5"
    sums.write_bytes(
        f"# published\r\n{ONE_MD5.upper()} *one.bin\r\n\r\n{TWO_MD5} *./sub/two.bin\r\n".encode()
    )
    assert read_checksums(sums).entries == {"one.bin": ONE_MD5, "sub/two.bin": TWO_MD5}
    report = verify(download, manifest=sums)
    assert verdicts(report) == [("one.bin", "ok"), ("sub/two.bin", "ok"), ("config.json", "extra")]


@pytest.mark.parametrize("name", ["../secret.bin", "/etc/passwd", "sub/../../x", "."])
def test_paths_escaping_the_folder_are_refused(download: Path, name: str) -> None:
    sums = download.parent / "evil.md5"
    sums.write_text(f"{ONE_MD5}  one.bin\n{ONE_MD5}  {name}\n")
    with pytest.raises(InputError) as e:
        verify(download, manifest=sums)
    assert e.value.message == (f"{sums}:2: {name!r} is not a path inside the folder being checked")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty.md5: no checksum lines in it"),
        (
            f"{ONE_MD5}  a\n{ONE_SHA256}  b\n",
            "empty.md5: cannot tell the algorithm from hashes of 32/64 hex digits",
        ),
        (f"MD5 (one.bin) = {ONE_MD5}\n", "empty.md5:1: not an md5sum/sha256sum line"),
        (f"{ONE_MD5}  a\n{TWO_MD5}  a\n", "empty.md5:2: a is listed twice"),
    ],
)
def test_malformed_checksum_files_name_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "empty.md5").write_text(text)
    with pytest.raises(InputError) as e:
        read_checksums(tmp_path / "empty.md5")
    assert fragment in e.value.message


def test_one_file_is_checked_against_its_line(download: Path) -> None:
    report = verify(download / "config.json", manifest=download.parent / "sums.md5")
    assert verdicts(report) == [("config.json", "ok")]
    with pytest.raises(InputError) as e:
        verify(download / "sub" / "two.bin", manifest=download.parent / "sums.md5")
    assert (
        e.value.message == f"{download / 'sub' / 'two.bin'}: not listed in "
        f"{download.parent / 'sums.md5'}"
    )


def test_jobs_do_not_change_the_result(download: Path) -> None:
    sums = download.parent / "sums.md5"
    one = verify(download, manifest=sums, jobs=1)
    three = verify(download, manifest=sums, jobs=3)
    assert one.rows == three.rows
    with pytest.raises(InputError, match="`jobs` must be at least 1, not 0"):
        verify(download, manifest=sums, jobs=0)


def test_nothing_to_check_against_lists_the_options(download: Path) -> None:
    with pytest.raises(InputError) as e:
        verify(download)
    assert e.value.message.endswith(
        "nothing to check it against (no weightkit.manifest.json, "
        "checklist.chk, checksums.md5, checksums.sha256 in it)"
    )
    assert "`known` NAME (known: zhixi-13b-base-fp16, zhixi-13b-base, " in e.value.hint


# --- shipped manifests (--known) -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ZHIXI))
def test_shipped_zhixi_manifests_hold_the_published_hashes(name: str) -> None:
    sums = read_checksums(checksums_dir() / f"{name}.md5")
    assert sums.algo == "md5"
    assert sums.entries == ZHIXI[name]


def test_known_resolves_a_shipped_manifest(tmp_path: Path) -> None:
    (tmp_path / "adapter_model.bin").write_bytes(ONE)
    (tmp_path / "adapter_config.json").write_bytes(CONFIG)
    report = verify(tmp_path, known="zhixi-13b-lora")
    assert report.source == checksums_dir() / "zhixi-13b-lora.md5"
    assert [(r.name, r.expected, r.actual, r.verdict) for r in report.rows] == [
        ("adapter_model.bin", "308f8424b1b6ac8dff343716dd78cde7", ONE_MD5, "MISMATCH"),
        ("adapter_config.json", None, None, "extra"),
    ]
    assert report.ok is False


def test_known_with_shards_missing_reports_each(tmp_path: Path) -> None:
    report = verify(tmp_path, known="zhixi-13b-diff-fp16")
    assert verdicts(report) == [
        (f"pytorch_model-0000{i}-of-00003.bin", "missing") for i in (1, 2, 3)
    ]


def test_unknown_known_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        verify(tmp_path, known="zhixi-7b")
    assert e.value.message == "no known manifest called 'zhixi-7b'"
    assert e.value.hint == (
        "Known: zhixi-13b-base-fp16, zhixi-13b-base, zhixi-13b-diff-fp16, "
        "zhixi-13b-diff, zhixi-13b-lora."
    )


def test_manifest_and_known_together_are_refused(download: Path) -> None:
    with pytest.raises(InputError, match="give `manifest` or `known`, not both"):
        verify(download, manifest=download.parent / "sums.md5", known="zhixi-13b-lora")


# --- Meta checklist.chk ----------------------------------------------------------------------


def test_meta_checklist_is_found_and_checked(tmp_path: Path) -> None:
    (tmp_path / "consolidated.00.pth").write_bytes(ONE)
    (tmp_path / "consolidated.01.pth").write_bytes(TWO)
    (tmp_path / "params.json").write_bytes(CONFIG)
    (tmp_path / "checklist.chk").write_text(
        f"{ONE_MD5}  consolidated.00.pth\n{TWO_MD5}  consolidated.01.pth\n"
        f"{CONFIG_MD5}  params.json\n"
    )
    report = verify(tmp_path)
    assert report.source == tmp_path / "checklist.chk"
    assert report.ok is True
    assert verdicts(report) == [
        ("consolidated.00.pth", "ok"),
        ("consolidated.01.pth", "ok"),
        ("params.json", "ok"),
    ]  # checklist.chk itself is not "extra"
    flip(tmp_path / "consolidated.00.pth", len(ONE) - 2)
    assert verdicts(verify(tmp_path))[0] == ("consolidated.00.pth", "MISMATCH")


# --- weightkit checksum ----------------------------------------------------------------------


def test_checksum_writes_sorted_md5sum_lines_that_verify_accepts(download: Path) -> None:
    result = write_checksums(download)
    out = result.path
    assert out == download / "checksums.md5"
    assert (result.files, result.bytes_hashed) == (
        ["config.json", "one.bin", "sub/two.bin"],
        len(CONFIG) + len(ONE) + len(TWO),
    )
    assert result.summary() == f"checksum: wrote 3 md5 line(s) to {out}."
    assert out.read_text() == (
        f"{CONFIG_MD5}  config.json\n{ONE_MD5}  one.bin\n{TWO_MD5}  sub/two.bin\n"
    )
    report = verify(download)  # finds checksums.md5 by itself
    assert report.source == out
    assert verdicts(report) == [("config.json", "ok"), ("one.bin", "ok"), ("sub/two.bin", "ok")]


def test_checksum_sha256_to_another_file(download: Path) -> None:
    out = write_checksums(download, algo="sha256", out=download.parent / "SHA256SUMS").path
    assert out.read_text() == (
        f"{CONFIG_SHA256}  config.json\n{ONE_SHA256}  one.bin\n{TWO_SHA256}  sub/two.bin\n"
    )
    assert verify(download, manifest=out).ok is True


def test_checksum_escapes_odd_names_like_md5sum(tmp_path: Path) -> None:
    (tmp_path / "back\\slash.bin").write_bytes(ONE)
    (tmp_path / "new\nline.bin").write_bytes(TWO)
    out = write_checksums(tmp_path).path
    assert out.read_text() == (f"\\{ONE_MD5}  back\\\\slash.bin\n\\{TWO_MD5}  new\\nline.bin\n")
    assert verdicts(verify(tmp_path)) == [("back\\slash.bin", "ok"), ("new\nline.bin", "ok")]


def test_checksum_of_an_unknown_algorithm_is_refused(download: Path) -> None:
    with pytest.raises(InputError, match="unknown hash algorithm 'sha1'"):
        write_checksums(download, algo="sha1")


# --- tensor manifest -------------------------------------------------------------------------

TENSOR_SHA256 = {
    "lm_head.weight": "3232de0b23c2d83d3a97a9bcbb8268e46e13695840cd31e12505c3f51402b33c",
    "model.embed_tokens.weight": "0c43f2957858ef1a2ee3e2cec548164d548995c05a42c6588927998cd6dd10d7",
    "model.norm.weight": "deedf0014cc4c691390c525d65c2d22d4cdb4cd65f6b50b9727499975a21c848",
}
# model.embed_tokens.weight with byte 5 of its data flipped (xor 0x20)
EMBED_FLIPPED = "cf5f2b1f2a1a00f3755e1bbf3662d3ad09b07ebd28076e174a8496a34b26cfa9"


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """A two-shard weightkit output, written the way every command writes one."""
    import torch

    from weightkit.checkpoint import write_checkpoint
    from weightkit.engine import Job, identity
    from weightkit.io.tensor_info import TensorInfo

    tensors = {
        "model.embed_tokens.weight": torch.arange(32, dtype=torch.float32).reshape(8, 4),
        "model.norm.weight": torch.ones(4, dtype=torch.float16),
        "lm_head.weight": torch.arange(32, dtype=torch.bfloat16).reshape(8, 4),
    }
    jobs = [
        Job(TensorInfo(n, t.dtype, tuple(t.shape)), lambda t=t: (t,), identity)
        for n, t in tensors.items()
    ]
    write_checkpoint(
        tmp_path / "out", jobs, title="test", inputs=[], options=WriteOptions(max_shard_size="100B")
    )
    return tmp_path / "out"


def tensor_offset(folder: Path, name: str) -> tuple[Path, int]:
    """The shard holding `name` and the file offset of its first data byte."""
    for shard in sorted(folder.glob("*.safetensors")):
        raw = shard.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        if name in header:
            return shard, 8 + n + header[name]["data_offsets"][0]
    raise AssertionError(name)


def test_tensor_manifest_all_ok(output: Path) -> None:
    report = verify(output)
    assert report.kind == "tensors"
    assert report.algo == "sha256"
    assert report.source == output / "weightkit.manifest.json"
    assert [(r.name, r.actual, r.verdict) for r in report.rows] == [
        (n, h, "ok") for n, h in sorted(TENSOR_SHA256.items())
    ]
    assert report.ok is True


def test_tensor_manifest_names_the_tensor_with_a_flipped_byte(output: Path) -> None:
    shard, offset = tensor_offset(output, "model.embed_tokens.weight")
    flip(shard, offset + 5)
    report = verify(output, jobs=2)
    assert report.ok is False
    assert [(r.name, r.verdict) for r in report.rows if r.verdict != "ok"] == [
        ("model.embed_tokens.weight", "MISMATCH")
    ]
    bad = next(r for r in report.rows if r.verdict == "MISMATCH")
    assert (bad.expected, bad.actual) == (TENSOR_SHA256["model.embed_tokens.weight"], EMBED_FLIPPED)


def test_tensor_manifest_missing_extra_and_changed_dtype(output: Path) -> None:
    from weightkit.manifest import Manifest, ManifestEntry

    manifest = Manifest.load(output)
    manifest.add("model.layers.0.weight", ManifestEntry("F32", (4,), "00" * 32))
    norm = manifest.entries["model.norm.weight"]
    manifest.add("model.norm.weight", ManifestEntry("BF16", norm.shape, norm.sha256))
    del manifest.entries["lm_head.weight"]
    manifest.write(output)
    report = verify(output)
    assert [(r.name, r.verdict, r.note) for r in report.rows] == [
        ("model.embed_tokens.weight", "ok", ""),
        ("model.layers.0.weight", "missing", ""),
        ("model.norm.weight", "MISMATCH", "F16 [4], expected BF16 [4]"),
        ("lm_head.weight", "extra", ""),
    ]


def test_one_shard_checks_only_its_tensors(output: Path) -> None:
    shard, _ = tensor_offset(output, "lm_head.weight")
    report = verify(shard)
    assert shard.name == "model-00002-of-00002.safetensors"
    assert [(r.name, r.verdict) for r in report.rows] == [
        ("lm_head.weight", "ok"),
        ("model.norm.weight", "ok"),
    ]


def test_tensor_manifest_refuses_md5(output: Path) -> None:
    with pytest.raises(InputError, match="a tensor manifest holds sha256 hashes, not md5"):
        verify(output, algo="md5")


def test_file_checks_do_not_import_torch(download: Path) -> None:
    code = (
        "import sys; import weightkit.cli.verify, weightkit.cli.checksum; "
        "from weightkit.ops.verify import verify, write_checksums; "
        f"r = verify({str(download)!r}, manifest={str(download.parent / 'sums.md5')!r}, "
        f"); write_checksums({str(download)!r}); "
        "print(r.ok, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "True False\n"


def test_python_calls_print_nothing(download: Path, capfd: pytest.CaptureFixture[str]) -> None:
    result = write_checksums(download, algo="sha256")
    report = verify(download, manifest=result.path)
    assert (report.ok, capfd.readouterr()) == (True, ("", ""))  # no bar, no summary
    assert json.loads(json.dumps(result.to_dict()))["files"] == [
        "config.json",
        "one.bin",
        "sub/two.bin",
    ]
