"""iptrace as a kubectl plugin: a real `kubectl` finds the installed `kubectl-iptrace` on PATH and runs it,
arguments, exit status and the cluster flags passing through; `python -m iptrace`; and the krew manifest, its
reproducible archive and its shim, installed the way krew lays a plugin out."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from types import ModuleType

import click
import pytest
import yaml
from click.testing import CliRunner

from iptrace.cli import main
from tests.apiserver import ApiServer, Grant, write_kubeconfig
from tests.conftest import ROOT, SAMPLES

KUBECTL = shutil.which("kubectl")
BIN = Path(sys.executable).parent  # where the install put the console scripts
PLUGIN = BIN / "kubectl-iptrace"
SAMPLE = SAMPLES / "nodeport-fb-backends.txt"

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (Debian: kubernetes-client)")
needs_plugin = pytest.mark.skipif(not PLUGIN.exists(), reason=f"{PLUGIN} is missing: reinstall iptrace "
                                  "(pip install -e .) so that its console scripts are current")


def kubectl(*args: str, path: list[Path], home: Path, env: dict[str, str] | None = None,
            cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl with only `path` (plus the system's directories) on PATH and a scratch HOME."""
    assert KUBECTL is not None
    environment = {"PATH": os.pathsep.join([*map(str, path), "/usr/local/bin", "/usr/bin", "/bin"]),
                   "HOME": str(home), "KUBECONFIG": str(home / "no-kubeconfig"), "LANG": "C.UTF-8",
                   **(env or {})}
    return subprocess.run([KUBECTL, *args], capture_output=True, text=True, env=environment, cwd=cwd,
                          timeout=120, check=False)


def reference(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


# ------------------------------------------------------------------------------------------------ installed


@needs_kubectl
@needs_plugin
def test_kubectl_lists_and_runs_the_plugin(tmp_path: Path) -> None:
    listed = kubectl("plugin", "list", path=[BIN], home=tmp_path)
    assert str(PLUGIN) in listed.stdout, listed.stdout + listed.stderr
    help_ = kubectl("iptrace", "--help", path=[BIN], home=tmp_path)
    assert help_.returncode == 0, help_.stderr
    assert help_.stdout.startswith("Usage: kubectl iptrace [OPTIONS] COMMAND [ARGS]...")
    assert "    kubectl iptrace explain sample_dumps/nodeport-fb-backends.txt" in help_.stdout
    sub = kubectl("iptrace", "audit", "--help", path=[BIN], home=tmp_path)
    assert sub.stdout.startswith("Usage: kubectl iptrace audit [OPTIONS]")
    assert "kubectl iptrace audit snap/ --kubeconfig ~/.kube/config -o html > report.html" in sub.stdout
    assert " iptrace audit" not in sub.stdout.replace("kubectl iptrace audit", "")

    services = kubectl("iptrace", "services", "sample_dumps/nodeport-fb-backends.txt", path=[BIN], home=tmp_path)
    assert services.returncode == 0, services.stderr
    assert services.stdout == reference("services", "sample_dumps/nodeport-fb-backends.txt")
    # Exit status and errors pass through kubectl unchanged.
    failing = kubectl("iptrace", "explain", str(SAMPLE), "--dst", "10.101.234.168:8001", path=[BIN], home=tmp_path)
    assert failing.returncode == 3 and "targetPort" in failing.stdout
    missing = kubectl("iptrace", "parse", "no-such-dump.txt", path=[BIN], home=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("Error: ")


@needs_kubectl
@needs_plugin
def test_cluster_flags_are_the_plugins_own(tmp_path: Path) -> None:
    """kubectl passes none of its flags to a plugin; --kubeconfig, --context and -n after `iptrace` reach
    iptrace, which reads the API (the unmodified client, over real HTTP to a local double) with them."""
    with ApiServer.from_data({"admin-token": Grant("admin"), "other-token": Grant("other")}) as api:
        config = write_kubeconfig(tmp_path / "kubeconfig", api.url, {"other": "other-token", "admin": "admin-token"})
        result = kubectl("iptrace", "services", str(SAMPLE), "--kubeconfig", str(config), "--context", "admin",
                         "-n", "default", "-o", "json", path=[BIN], home=tmp_path)
        assert result.returncode == 0, result.stderr
        items = {i["service"]: i for i in json.loads(result.stdout)}
        assert set(items) == {"default/fb-backends:ka-port", "default/karma-daemon:http", "default/karma-daemon:ftp",
                              "default/kubernetes:https"}
        assert items["default/fb-backends:ka-port"]["api"]["type"] == "NodePort"
        paths = {r.path.split("?")[0] for r in api.requests}
        assert "/api/v1/namespaces/default/services" in paths and "/api/v1/services" not in paths
        # KUBECONFIG works as kubectl users expect when --kubeconfig is not given.
        explained = kubectl("iptrace", "explain", str(SAMPLE), "--dst", "10.101.234.168:5001", "--context", "admin",
                            "-n", "default", path=[BIN], home=tmp_path, env={"KUBECONFIG": str(config)})
        assert explained.returncode == 0, explained.stderr
        wrong = kubectl("iptrace", "services", str(SAMPLE), "--kubeconfig", str(config), "--context", "nope",
                        path=[BIN], home=tmp_path)
        assert wrong.returncode == 1
        assert wrong.stderr.strip() == f"Error: kubeconfig {config} has no context 'nope'; see kubectl config get-contexts"


def test_every_command_that_reads_the_cluster_takes_kubectls_flags() -> None:
    def options(command: str) -> dict[str, list[str]]:
        found = main.commands[command]
        return {p.name or "": [*p.opts, *p.secondary_opts] for p in found.params if isinstance(p, click.Option)}

    for command in ("services", "trace", "explain", "audit", "diff"):
        opts = options(command)
        assert opts["kubeconfig"] == ["--kubeconfig"], command
        assert opts["context"] == ["--context"], command
        assert sorted(opts["namespace"]) == ["--namespace", "-n"], command
    collect = options("collect")
    assert collect["kubeconfig"] == ["--kubeconfig"] and collect["context"] == ["--context"]


def test_python_m_iptrace() -> None:
    result = subprocess.run([sys.executable, "-m", "iptrace", "services", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: python -m iptrace services [OPTIONS] DUMP")
    assert "    python -m iptrace services sample_dumps/nodeport-fb-backends.txt" in result.stdout


# ------------------------------------------------------------------------------------------------ krew


def krew_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("krew_build", ROOT / ".ci" / "krew" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_krew_manifest() -> None:
    manifest = yaml.safe_load((ROOT / ".ci" / "krew" / "iptrace.yaml").read_text())
    assert manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert manifest["kind"] == "Plugin" and manifest["metadata"]["name"] == "iptrace"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert manifest["spec"]["version"] == f"v{version}", "bump .ci/krew/iptrace.yaml with pyproject.toml"
    assert manifest["spec"]["shortDescription"] and len(manifest["spec"]["shortDescription"]) <= 60
    for platform in manifest["spec"]["platforms"]:
        assert platform["selector"]["matchExpressions"] == [{"key": "os", "operator": "In",
                                                             "values": ["linux", "darwin"]}]
        assert platform["bin"] == "kubectl-iptrace"
        assert platform["files"] == [{"from": "*", "to": "."}]
        assert (platform["uri"], platform["sha256"]) == ("@URI@", "@SHA256@")  # filled in by build.py


def test_krew_archive_is_reproducible_and_complete() -> None:
    build = krew_build()
    archive = build.build_archive()
    assert build.build_archive() == archive
    rendered = yaml.safe_load(build.manifest("https://example.org/kubectl-iptrace.tar.gz",
                                             hashlib.sha256(archive).hexdigest()))
    platform = rendered["spec"]["platforms"][0]
    assert platform["sha256"] == hashlib.sha256(archive).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members[platform["bin"]].mode == 0o755
    modules = {f"src/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / "iptrace").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules <= set(members)
    # An installed copy reads its grammar from the package (the repository's iptrace/grammars is a symlink).
    assert {"src/pyproject.toml", "src/grammars/iptables_save.lark",
            "src/iptrace/grammars/iptables_save.lark"} <= set(members)
    assert all(m.mtime == 0 and m.uid == 0 and m.isfile() for m in members.values())


@needs_kubectl
def test_krew_layout_runs_through_kubectl(tmp_path: Path) -> None:
    """Unpacked as krew does (~/.krew/store/iptrace/VERSION, ~/.krew/bin/kubectl-iptrace a symlink to the
    shim), the plugin is found and runs the bundled source. IPTRACE_PYTHON points the shim at this test's
    interpreter (which has the dependencies) instead of making a virtualenv, which would need a package index."""
    build = krew_build()
    store = tmp_path / ".krew" / "store" / "iptrace" / build.version()
    store.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(build.build_archive())) as tar:
        tar.extractall(store, filter="data")
    bin_dir = tmp_path / ".krew" / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl-iptrace").symlink_to(store / "kubectl-iptrace")
    listed = kubectl("plugin", "list", path=[bin_dir], home=tmp_path)
    assert str(bin_dir / "kubectl-iptrace") in listed.stdout, listed.stdout + listed.stderr
    env = {"IPTRACE_PYTHON": sys.executable}
    result = kubectl("iptrace", "services", "sample_dumps/nodeport-fb-backends.txt", path=[bin_dir], home=tmp_path,
                     env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference("services", "sample_dumps/nodeport-fb-backends.txt")
    assert (store / "src" / "iptrace" / "__pycache__").is_dir(), "the bundled source was not the one that ran"
    help_ = kubectl("iptrace", "--help", path=[bin_dir], home=tmp_path, env=env)
    assert help_.stdout.startswith("Usage: kubectl iptrace [OPTIONS] COMMAND")
    broken = kubectl("iptrace", "--help", path=[bin_dir], home=tmp_path, env={"IPTRACE_PYTHON": "/nonexistent/py"})
    assert broken.returncode == 1
    assert "iptrace needs Python 3.11 or newer (set IPTRACE_PYTHON)" in broken.stderr


def test_no_help_example_names_bare_iptrace_as_the_plugin() -> None:
    # `collect … --out fleet/ && iptrace audit fleet/`: the second command of an example line too.
    for args in ([], *([name] for name in sorted(main.commands))):
        result = CliRunner().invoke(main, [*args, "--help"], prog_name="kubectl iptrace")
        assert result.exit_code == 0, result.output
        bare = [line for line in result.output.splitlines()
                if re.search(rf"(?<!kubectl )(?<![\w/.-])iptrace (?:{'|'.join(main.commands)})\b", line)]
        assert bare == [], (args, bare)


@pytest.mark.parametrize("prog", ["kubectl iptrace", "python -m iptrace", "iptrace"])
def test_messages_suggest_commands_by_the_name_the_program_was_called(tmp_path: Path, prog: str) -> None:
    # Not only help: an error (a library's) and a note (the CLI's) that suggest a command spell it as the user
    # called the program, so that the suggestion can be pasted.
    empty = tmp_path / "empty"
    empty.mkdir()
    error = CliRunner().invoke(main, ["audit", str(empty)], prog_name=prog)
    assert error.exit_code == 1 and f"run `{prog} collect NODE... --out DIR` first" in error.stderr, error.stderr
    lines = SAMPLE.read_text().split("\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join([*lines[:3], *(['-A KUBE-SERVICES -m comment --comment "oops'] * 4), *lines[3:]]))
    note = CliRunner().invoke(main, ["services", "--lenient", str(bad)], prog_name=prog)
    assert note.exit_code == 0 and f"({prog} parse --lenient {bad} lists them all)" in note.stderr, note.stderr
    # (and a diagnosis's fix, in the answer itself)
    legacy = SAMPLE.parent / "legacy-split-nft.txt"
    fix = CliRunner().invoke(main, ["explain", str(legacy), "--dst", "10.96.0.1:443"], prog_name=prog)
    assert f"(`{prog} collect` fetches both)" in fix.stdout.replace("\n  ", " "), fix.stdout
    # (and a diff's warning: diff printed its text unnamed, `iptrace trace` under `kubectl iptrace diff`)
    split = CliRunner().invoke(main, ["diff", str(SAMPLE), str(SAMPLE.parent / "mode-split-nft.nft")], prog_name=prog)
    assert f"`{prog} trace` follows both" in split.stdout, split.stdout
    if prog != "iptrace":
        said = (error.stderr + note.stderr + fix.stdout + split.stdout).replace(prog, "")
        assert not re.search(r"(?<![\w/.-])iptrace (?:collect|parse|trace)", said), said


@pytest.mark.parametrize("prog", ["kubectl iptrace", "python -m iptrace"])
def test_the_html_report_is_titled_iptrace_audit_however_it_was_called(tmp_path: Path, prog: str) -> None:
    """The page's title and heading name the report (`iptrace audit`, as a browser tab and a printout show it),
    whatever the program was called by; the commands it suggests (its footer's) are spelled as it was called."""
    for name in ("node-a", "node-b"):
        (tmp_path / name).mkdir()
        shutil.copy(SAMPLE, tmp_path / name / "iptables-save.txt")
    plain = reference("audit", str(tmp_path), "-o", "html")
    called = CliRunner().invoke(main, ["audit", str(tmp_path), "-o", "html"], prog_name=prog)
    assert called.exit_code == 0, called.output
    heads = [re.findall(r"<title>[^<]*</title>|<h1>[^<]*</h1>", html) for html in (plain, called.stdout)]
    assert heads[0] == heads[1] == ["<title>iptrace audit: OK — 0 errors, 0 warnings on 2 nodes</title>",
                                    "<h1>iptrace audit of 2 nodes</h1>"]
    assert f"<code>{prog} audit … -o json</code>" in called.stdout
    assert called.stdout.replace(f"{prog} audit …", "iptrace audit …") == plain
