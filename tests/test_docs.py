"""The manual: README is a front page, the configuration page is the schema's (regenerated and
compared), and the docs site builds strictly (a broken link, anchor or a page left out of the
nav fails)."""
import os
import re
import subprocess
import sys
from pathlib import Path

from gan_dist.tools import config_doc

ROOT = Path(__file__).resolve().parents[1]


def test_the_configuration_page_is_generated_from_the_schema():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == config_doc.render(), "docs/configuration.md is out of date: run python -m gan_dist.tools.config_doc"
    from gan_dist.config.loading import settings

    assert all(f"| `{key}` |" in page for key, _, _ in settings())  # every key, as --help lists it


def test_the_docs_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    assert mkdocs.exists(), "mkdocs is missing: install the docs extra (pip install -e '.[dev,docs]'; make test does)"
    r = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_readme_is_a_front_page_whose_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
