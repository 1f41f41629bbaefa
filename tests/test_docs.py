"""The API reference (docs/api) builds with Sphinx, every warning an error."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_api_reference_builds_without_warnings(tmp_path):
    build = pytest.importorskip("sphinx.cmd.build")
    status = build.build_main(
        ["-W", "--keep-going", "-E", "-q", "-b", "html", str(ROOT / "docs" / "api"), str(tmp_path / "html")]
    )
    assert status == 0
    page = (tmp_path / "html" / "index.html").read_text()
    for name in (
        "tensorbayes.fit",
        "tensorbayes.formats.TTM",
        "tensorbayes.infer.MeanFieldELBO",
        "tensorbayes.guides.MeanField",
        "tensorbayes.models.DLRM",
        "tensorbayes.rank.prune",
    ):
        assert f'id="{name}"' in page
