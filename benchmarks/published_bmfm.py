"""Check scsig's BMFM-RNA loader against BMFM-RNA's published code, rerunnable from the repo.

Run (from the repository root, with scsig importable)::

    python benchmarks/published_bmfm.py                   # downloads the published files (needs internet)
    python benchmarks/published_bmfm.py --source DIR      # DIR laid out like the repository (bmfm_targets/...)
    python benchmarks/published_bmfm.py --source DIR --quick   # fewer cells and steps, well under a minute

The published package (``bmfm_targets`` in IBM's ``BiomedSciAI/biomed-multi-omic``, Apache-2.0) is not on
PyPI and its requirements are heavy, so this script takes the few files on the embedding path and runs them
in place. No published code is stored in this repository: the files are downloaded at run time from
``https://raw.githubusercontent.com/BiomedSciAI/biomed-multi-omic/<commit>/<path>`` into a temporary folder
(``urllib``), or read from ``--source``. Then:

1. **Imports.** The published package ``__init__`` files are not executed (they import the whole library:
   data modules, Lightning, ClearML). An import hook builds ``bmfm_targets`` and its subpackages as empty
   packages that resolve names from the files below (``EXPORTS``); any other ``bmfm_targets`` module (label
   ontologies, datasets, serialization, tokenizer resources) becomes a stand-in whose names are classes that
   refuse to be called, and so do the third-party packages in ``OPTIONAL_THIRD_PARTY`` when they are not
   installed (``clearml``, ``focal_loss``: imported by the metrics module for its losses). The script
   prints every stand-in that was touched. ``TrainerConfig`` is built here as a dataclass with the
   published defaults (``pooling_method="pooling_layer"``), since the training configuration module imports
   the training stack; the checkpoint only pickles it. Where the pinned files disagree (they come from
   different commits), a class attribute is added with its default, printed (``COMPAT``).
2. **Edits**, printed as they are applied, each required to match exactly once (``SUBSTITUTIONS``): the two
   float32 casts of the expression values are made dtype-preserving, so that the published modules can run
   in float64. In a float32 model they change nothing (the values are rounded to float32 once, at the value
   encoder instead of in the collator).
3. **Checks** (``--quick`` runs fewer cells and steps): a random BMFM-RNA checkpoint (width 32, 2 layers,
   4 heads, 400 genes) written by the published classes in the published layout (``SCBertConfig``,
   ``FieldInfo``, ``TrainerConfig`` pickled in the Lightning checkpoint; the ``MultiFieldTokenizer`` folder);
   cells of 1 to 300 expressed genes, the data's genes in another order than the vocabulary. It prints
   the largest relative difference between ``sg.models.load``'s embeddings and the published predict path
   (dataset rows, ``MultiFieldCollator``, ``SCBertForMultiTaskModeling``, ``get_embeddings_from_outputs``)
   for the three poolings in float32 and float64; scsig's integrated gradients against captum's on the
   published module's expression input (float64); batch invariance; a cell longer than the model; and
   how much an explicitly stored zero moves the published embedding (scsig drops it).

Sources (``MANIFEST``): each file is pinned to the commit whose text was read through a code index of public
GitHub repositories; the index stores versions of each file at different commits, so the pins differ
from file to file (where two of them disagree, ``COMPAT`` bridges it). One file is not stored for the
official repository: ``bmfm_targets/tokenization/multifield_instance.py``. Its text was read from a copy of the
package vendored in ``netanelazran11/BiomedSciAI_ACL_Project`` (commit
``727fd3f02274a6ac416fc638bdda2ba933170611``, a dataclass of ``data`` and ``metadata``); it is pinned here
to the official repository at the commit of ``multifield_tokenizer.py``, whose ``from .multifield_instance
import MultiFieldInstance`` puts it at that path in that tree.

Where this was written there was no internet, so the download path ran only against a local HTTP server
(``tests/benchmarks/test_published_bmfm_fetch.py``). The numbers in ``docs/token_models.md`` come from
``--source`` on a local copy assembled from the text read through the code index: in each file the
published imports and module-level code and the published classes and functions on the checked path
(the scBERT encoder and multi-task model with its heads, the configuration classes, the tokenizer, the
collator and its transforms), with the parts off that path left out (a few branches not taken, such as
position or pretrained embeddings, raise instead). The whole files at the pinned commits have not been run
through the hook.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.abc
import importlib.util
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = "BiomedSciAI/biomed-multi-omic"
RAW_URL = f"https://raw.githubusercontent.com/{REPO}"

MANIFEST: dict[str, str] = {
    "bmfm_targets/config/tokenization_config.py": "357c3398a69305bd23c2e665134941dd67704783",
    "bmfm_targets/config/model_config.py": "3a95f6587b63390c43beec5be7c33edfcd45f53d",
    "bmfm_targets/models/model_utils.py": "e18f61ea514fca1d69bebd933f0d340523626e06",
    "bmfm_targets/models/predictive/_compat_utils.py": "74d674ba36099370ee557d30620199c19eeb1b8d",
    "bmfm_targets/models/predictive/attentions.py": "2b9dde18ff1c9bce7fe62172b53f91d35a493b73",
    "bmfm_targets/models/predictive/layers.py": "0b84010f31e743aa96133659da1b89a7231acf3c",
    "bmfm_targets/models/predictive/scbert/modeling_scbert.py": "12a8ab773369025c0d6278a9e2e8e61b5b708d52",
    "bmfm_targets/tokenization/multifield_instance.py": "11d1f81a5c1f627994baf64e759bd6b7d69d3c84",
    "bmfm_targets/tokenization/multifield_tokenizer.py": "11d1f81a5c1f627994baf64e759bd6b7d69d3c84",
    "bmfm_targets/tokenization/multifield_collator.py": "0a944f54bbfa22e444d317c3da3e279a02457231",
    "bmfm_targets/tokenization/load.py": "137b4ec41230d7b0193853e016f95a4a651b633c",
    "bmfm_targets/training/sample_transforms.py": "110731f37f63ea3e2ee0eec4d04bd5bf0139d57d",
    "bmfm_targets/training/metrics/metric_functions.py": "137b4ec41230d7b0193853e016f95a4a651b633c",
}
"""Repository path -> pinned commit of every published file the check runs."""

EXPORTS: dict[str, dict[str, str]] = {
    "bmfm_targets.config": {
        "FieldInfo": "tokenization_config",
        "LabelColumnInfo": "tokenization_config",
        "TokenizerConfig": "tokenization_config",
        "PreTrainedEmbeddingConfig": "tokenization_config",
        "SCModelConfigBase": "model_config",
        "SCBertConfig": "model_config",
        "TrainerConfig": "training_config",
    },
    "bmfm_targets.tokenization": {
        "MultiFieldInstance": "multifield_instance",
        "MultiFieldTokenizer": "multifield_tokenizer",
        "MultiFieldCollator": "multifield_collator",
        "load_tokenizer": "load",
    },
    "bmfm_targets.training.metrics": {"masked_mean": "metric_functions"},
}
"""The names a package ``__init__`` re-exports from its modules, for the names the files above import."""

SUBSTITUTIONS: tuple[tuple[str, str, str, str], ...] = (
    (
        "bmfm_targets/models/predictive/layers.py",
        'return getattr(self, field.field_name + "_embeddings")(\n                input_ids[:, i, :].float()\n',
        'return getattr(self, field.field_name + "_embeddings")(\n'
        "                input_ids[:, i, :].to(self.LayerNorm.weight.dtype)\n",
        "the value encoder's input follows the model's dtype (was .float())",
    ),
    (
        "bmfm_targets/tokenization/multifield_tokenizer.py",
        'input_ids=field_encodings["input_ids"].float(),',
        'input_ids=field_encodings["input_ids"].double(),',
        "the tokenizer writes the values into a float64 tensor (was .float())",
    ),
)
"""(path, published text, replacement, why): run-time edits, each required to match exactly once."""

COMPAT: tuple[tuple[str, str, str, object, str], ...] = (
    (
        "bmfm_targets.config.tokenization_config",
        "FieldInfo",
        "datastore_config",
        None,
        "sample_transforms.py at its pin reads FieldInfo.datastore_config, absent from tokenization_config.py at "
        "its pin (the pins differ); None, the attribute's default where it exists, means no datastore",
    ),
)
"""(module, class, attribute, default, why): class attributes set after loading a file, when missing."""

OPTIONAL_THIRD_PARTY = ("clearml", "focal_loss", "torchmetrics", "lightning", "pytorch_lightning")
"""Third-party packages imported by the files above but off the embedding path: stand-ins when missing."""


# ------------------------------------------------------------------------------------------------ getting the files


def fetch_published(
    dest: Path, files: dict[str, str] | None = None, base_url: str = RAW_URL, timeout: float = 30.0
) -> list[Path]:
    """Download ``files`` (path -> commit) from ``{base_url}/{commit}/{path}`` into ``dest``, laid out by path."""
    written = []
    for path, commit in (MANIFEST if files is None else files).items():
        url = f"{base_url}/{commit}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as err:
            msg = (
                f"{url} answered HTTP {err.code}: {path} is not at commit {commit}. Pass --source DIR, "
                f"a local folder laid out like {REPO}, to read the published files from disk."
            )
            raise RuntimeError(msg) from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            msg = (
                f"could not download {url} ({reason}); this machine may have no internet. Pass --source DIR, "
                f"a local folder laid out like {REPO} (bmfm_targets/...), to read the published files from disk."
            )
            raise RuntimeError(msg) from err
        target = Path(dest) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    return written


def check_source(root: Path) -> None:
    """Raise, naming the missing files, unless ``root`` holds every file of ``MANIFEST``."""
    missing = [p for p in MANIFEST if not (Path(root) / p).is_file()]
    if missing:
        msg = (
            f"--source {root} lacks {len(missing)} published file(s): {', '.join(missing)}. "
            f"Give a folder laid out like {REPO}, or run without --source to download them."
        )
        raise FileNotFoundError(msg)


def edited_text(root: Path, path: str, log: list[str]) -> str:
    """The published file's text with its ``SUBSTITUTIONS`` applied (each must match exactly once)."""
    text = (Path(root) / path).read_text()
    for target, old, new, why in SUBSTITUTIONS:
        if target != path:
            continue
        n = text.count(old)
        if n != 1:
            msg = (
                f"the edit '{why}' expects its text once in {path}, found {n} times: the file differs from "
                f"the pinned commit {MANIFEST[path][:12]}; update SUBSTITUTIONS in {Path(__file__).name}."
            )
            raise RuntimeError(msg)
        text = text.replace(old, new)
        log.append(f"edit {path}: {old.strip()!r} -> {new.strip()!r} ({why})")
    return text


# ------------------------------------------------------------------------------------------------ importing them


def _standin(module: str, name: str, log: list[str]) -> type:
    def refuse(*args, **kwargs):
        msg = f"{module}.{name} is a stand-in of published_bmfm.py (off the checked path)"
        raise RuntimeError(msg)

    log.append(f"stand-in {module}.{name}")
    return type(name, (), {"__init__": refuse, "__module__": module})


def _trainer_config_module(module) -> None:
    """``TrainerConfig`` with the published defaults the predict path reads (the checkpoint pickles it)."""
    fields = [
        ("batch_size", int, 64),
        ("learning_rate", float, 1e-4),
        ("losses", list, dataclasses.field(default_factory=list)),
        ("metrics", list, None),
        ("pooling_method", str, "pooling_layer"),
        ("batch_prediction_behavior", str, None),
    ]
    cls = dataclasses.make_dataclass("TrainerConfig", fields, namespace={"__module__": module.__name__})
    module.TrainerConfig = cls


def _apply_compat(module, log: list[str]) -> None:
    for name, cls_name, attr, default, why in COMPAT:
        cls = getattr(module, cls_name, None) if module.__name__ == name else None
        if cls is not None and not hasattr(cls, attr):
            setattr(cls, attr, default)
            log.append(f"compat {name}.{cls_name}.{attr} = {default!r} ({why})")


RUNTIME_MODULES = {"bmfm_targets.config.training_config": _trainer_config_module}


class PublishedImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook for ``bmfm_targets`` read from ``root``: the ``MANIFEST`` files (edited), stand-ins elsewhere."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files = {p[: -len(".py")].replace("/", "."): p for p in MANIFEST}
        self.log: list[str] = []
        self.third_party = {n for n in OPTIONAL_THIRD_PARTY if importlib.util.find_spec(n) is None}

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top != "bmfm_targets" and top not in self.third_party:
            return None
        is_package = fullname not in self.files and fullname not in RUNTIME_MODULES
        return importlib.util.spec_from_loader(fullname, self, is_package=is_package)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        name = module.__name__
        if name in self.files:
            path = self.files[name]
            module.__file__ = str(self.root / path)
            code = compile(edited_text(self.root, path, self.log), module.__file__, "exec")
            exec(code, module.__dict__)  # the published file, as fetched, with the printed edits
            _apply_compat(module, self.log)
        elif name in RUNTIME_MODULES:
            RUNTIME_MODULES[name](module)
        else:
            module.__getattr__ = self._resolver(name)

    def _resolver(self, package: str):
        def resolve(attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)
            sub = f"{package}.{attr}"
            if sub in self.files or sub in RUNTIME_MODULES or any(f.startswith(sub + ".") for f in self.files):
                return importlib.import_module(sub)
            if attr in EXPORTS.get(package, {}):
                return getattr(importlib.import_module(f"{package}.{EXPORTS[package][attr]}"), attr)
            standin = _standin(package, attr, self.log)
            setattr(sys.modules[package], attr, standin)
            return standin

        return resolve


def import_published(root: Path) -> tuple[dict, PublishedImporter]:
    """Install the import hook for ``root`` and import the published names the check uses."""
    check_source(root)
    importer = PublishedImporter(root)
    sys.meta_path.insert(0, importer)
    names = {
        "bmfm_targets.config": ["FieldInfo", "LabelColumnInfo", "SCBertConfig", "TrainerConfig"],
        "bmfm_targets.models.predictive.layers": ["get_embeddings_from_outputs"],
        "bmfm_targets.models.predictive.scbert.modeling_scbert": ["SCBertForMultiTaskModeling"],
        "bmfm_targets.tokenization": ["MultiFieldCollator", "MultiFieldInstance", "MultiFieldTokenizer"],
        "bmfm_targets.tokenization.load": ["load_tokenizer"],
    }
    pub = {}
    for module, attrs in names.items():
        mod = importlib.import_module(module)
        pub.update({a: getattr(mod, a) for a in attrs})
    return pub, importer


# ------------------------------------------------------------------------------------------------ the command line


def main(argv: list[str] | None = None) -> None:
    """Get the published files, import them, run the checks and print their numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="a local folder laid out like the repository (no download)")
    parser.add_argument("--quick", action="store_true", help="fewer cells and integration steps")
    args = parser.parse_args(argv)
    print(f"published code: {REPO}, files pinned per commit:")
    for path, commit in MANIFEST.items():
        print(f"  {commit}  {path}")
    with tempfile.TemporaryDirectory(prefix="published_bmfm_") as tmp:
        if args.source is None:
            root = Path(tmp) / "src"
            try:
                fetch_published(root)
            except RuntimeError as err:
                parser.exit(2, f"published_bmfm.py: {err}\n")
            print(f"source: downloaded from {RAW_URL} into a temporary folder")
        else:
            root = args.source.resolve()
            print(f"source: --source {root}")
        pub, importer = import_published(root)
        if importer.third_party:
            print(f"stand-ins for missing third-party packages: {', '.join(sorted(importer.third_party))}")
        from _published_bmfm_checks import run_checks

        start = time.perf_counter()
        run_checks(pub, Path(tmp), quick=args.quick)
        print("edits applied and stand-ins touched (imports inside functions run during the checks):")
        for line in dict.fromkeys(importer.log):
            print(f"  {line}")
        print(f"checks done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
