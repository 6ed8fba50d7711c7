"""mkdocs hooks (mkdocs.yml `hooks:`): README.md as the site's home page, and links that work on
GitHub and in the site alike.

Every Markdown file links as GitHub resolves links: from the file's own place in the repository.
README.md sits at the root (`docs/logging.md`, `docs/images/tensorboard.png`, `benchmarks/zoo.py`),
the pages in docs/ (`../README.md#your-own-recipe`). The site is built from docs/, so, seen from
there, those links point nowhere. Rather than keep a second README or write links for the site
only, the hooks:

- add README.md to the site's root, where mkdocs makes it the home page (index.html);
- rewrite each relative link and image of every page after Markdown has parsed them and before
  mkdocs checks them (a treeprocessor between Markdown's "inline" and mkdocs's "relpath"): the
  target is resolved from the file's real place, then written as the site needs it. A target in
  docs/, or README.md, is made relative to where the page sits in the site; another file of the
  repository (a script, a config) is copied into the site under `repository/` and linked there.
  Anything else (a folder, a file that does not exist) stays as written, so mkdocs's validation
  reports it and `--strict` fails the build.

The rewritten links then go through mkdocs's own link and anchor checks like any other.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit
from xml.etree.ElementTree import Element

from markdown import Extension, Markdown
from markdown.treeprocessors import Treeprocessor
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

# mkdocs makes a page named README.md its folder's index (index.html), as GitHub shows it; under
# that name mkdocs's warnings name the file a person edits.
HOME = "README.md"
COPIES = "repository"  # where the site keeps the repository files its pages link to

# The config, the site's files and the page being rendered: mkdocs renders one page at a time,
# and its Markdown instance (which runs the treeprocessor) has no other way to know them.
_config: MkDocsConfig | None = None
_files: Files | None = None
_page: Page | None = None


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    global _config
    _config = config
    config.markdown_extensions.append(_SiteLinks())
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    global _files
    for name in (HOME, "index.md"):
        if files.get_file_from_path(name) is not None:
            raise PluginError(f"docs/{name} exists, but the README.md at the root is the home page")
    readme = _root(config) / "README.md"
    files.append(File.generated(config, HOME, abs_src_path=str(readme)))
    _files = files
    return files


def on_page_markdown(markdown: str, page: Page, **_: Any) -> str:
    global _page
    _page = page
    return markdown


def _root(config: MkDocsConfig) -> Path:
    """The repository: the folder of mkdocs.yml."""
    return Path(config.config_file_path).resolve().parent


class _SiteLinks(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        # After "inline" (20), which makes the <a> and <img> elements; before mkdocs's "relpath"
        # (0), which checks them.
        md.treeprocessors.register(_Rewrite(md), "dualtrain_site_links", 10)


class _Rewrite(Treeprocessor):
    def run(self, root: Element) -> None:
        if _config is None or _files is None or _page is None or not _page.file.abs_src_path:
            return
        for element in root.iter():
            attribute = {"a": "href", "img": "src"}.get(element.tag)
            if attribute and element.get(attribute):
                link = _site_link(element.get(attribute, ""), _page, _files, _config)
                element.set(attribute, link)


def _site_link(url: str, page: Page, files: Files, config: MkDocsConfig) -> str:
    """`url`, written from the page's real place in the repository, as the site needs it."""
    scheme, netloc, path, query, fragment = urlsplit(url)
    if scheme or netloc or not path or path.startswith("/"):
        return url  # another site, an anchor of this page, or absolute (mkdocs reports those)
    docs = Path(config.docs_dir).resolve()
    root = _root(config)
    source = Path(str(page.file.abs_src_path)).resolve().parent
    target = Path(posixpath.normpath((source / unquote(path)).as_posix()))
    here = (docs / posixpath.dirname(page.file.src_uri)).resolve()
    if not target.is_file():
        return url  # mkdocs reports it, as written
    if target.is_relative_to(docs):
        site_target = target
    elif target == root / "README.md":
        site_target = docs / HOME
    elif target.is_relative_to(root) and _shareable(target, root):
        copy = f"{COPIES}/{target.relative_to(root).as_posix()}"
        if files.get_file_from_path(copy) is None:
            files.append(File.generated(config, copy, abs_src_path=str(target)))
        site_target = docs / copy
    else:
        return url
    relative = Path(posixpath.relpath(site_target, here)).as_posix()
    return urlunsplit(("", "", relative, query, fragment))


def _shareable(target: Path, root: Path) -> bool:
    """A file of the repository's own, not of git's or of a build."""
    first = target.relative_to(root).parts[0]
    return first not in (".git", "site", "outputs", "multirun") and not first.startswith(".")
