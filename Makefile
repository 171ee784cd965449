# decodebench: `make demo` runs the main job on the embedded default, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel on this kind of machine; on a GPU machine use e.g. `make setup TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
# Task data: ../shared/data when it sits beside the checkout (as in CI), else the hub.
ifneq ($(wildcard ../shared/data/README.md),)
export DECODEBENCH_DATA ?= $(abspath ../shared/data)
endif

.PHONY: setup test lint format demo bench-timer bench-ar bench-compiled bench-lookahead bench-attention check-ci compare-references \
	reproduce-cpu reproduce-quant-cpu reproduce-budget-cpu reproduce-training-free-cpu reproduce-drafters-cpu reproduce-specbench-groups reproduce-llm2slm-cpu reproduce-all clean gpu-check gpu-check-dry

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# Ray is an optional extra for users (`bench sweep --executor ray`); the tests exercise it, so they install it.
$(VENV)/.ray: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev,ray]"
	touch $@

# llama-cpp-python (`--method llamacpp`) compiles llama.cpp on install: about 7.5 minutes on 2 cores.
$(VENV)/.llamacpp: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev,llamacpp]"
	touch $@

# Lint (ruff: errors, imports, complexity <= 12), format, then the suite.
test: setup $(VENV)/.ray $(VENV)/.llamacpp
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: setup
	$(BIN)/bench run --method pld --task mtbench --limit 4 --max-new-tokens 96

# Benchmarks (long; print ratios, not asserted in tests)
bench-timer: setup
	$(BIN)/python scripts/timer_overhead.py

bench-ar: setup
	$(BIN)/python scripts/ar_vs_hf.py

# Compiled AR (`--compile`) against transformers' eager generate() (target >= 1.5x) and the roofline (>= 40%), with our
# eager AR and transformers' static cache + compile, interleaved on the same MT-bench prompts (BENCH_FLAGS: e.g. --threads 1).
bench-compiled: setup
	$(BIN)/python scripts/compiled_ar.py $(BENCH_FLAGS)

# Our default lookahead against the reference implementation's compression ratios, with and without each improvement.
bench-lookahead: setup
	$(BIN)/python scripts/lookahead_reference.py

# The target's forward cost for 1, 5 and 21 query tokens at 200 and 1000 cached tokens, stock vs our attention path.
bench-attention: setup
	$(BIN)/python scripts/attention_cost.py

# Our methods against transformers' own at identical resolved settings, on Spec-Bench first turns -> results/references/.
compare-references: setup
	$(BIN)/bench sweep results/configs/references-smollm2.yaml --no-report
	$(BIN)/bench sweep results/configs/references-qwen.yaml --no-report
	$(BIN)/bench report results/references/runs --out results/references

# Regression check for CI: a tiny sweep on the smallest offline preset against the committed baseline table.
# After an intended change: `make check-ci CHECK_FLAGS=--update` rewrites the baseline.
check-ci: setup
	rm -rf runs/ci
	$(BIN)/bench sweep results/configs/ci.yaml --no-report
	$(BIN)/bench check runs/ci --baseline results/baselines/ci-cpu.csv $(CHECK_FLAGS)

# The papers' tables. CPU-sized on the offline presets (about 25 minutes here), committed as results/cpu/.
reproduce-cpu: setup
	$(BIN)/bench sweep results/configs/cpu.yaml --no-report
	$(BIN)/bench sweep results/configs/cpu-spec.yaml --no-report
	$(BIN)/bench report results/cpu/runs results/cpu/runs-onednn results/cpu/runs-code --out results/cpu \
		--against lookahead --against spec-bench --against llm-to-slm

# The cost model on CPU (about 30 minutes here): the forward cost curve of smollm2-135m per kernel backend
# (results/cpu/profile/) and compiled (results/cpu/profile-compile/), then pld with its hand-set draft length and with --budget auto on Spec-Bench's six groups,
# with MKL's kernels and with oneDNN's (--kernels onednn, its own baseline);
# the CPU table gains their rows and, for every run with per-forward step sizes, the predicted speedup.
reproduce-budget-cpu: setup
	$(BIN)/bench profile --model smollm2-135m --out results/cpu/profile
	$(BIN)/bench profile --model smollm2-135m --compile --kernels aten --queries 1,2,4,8,16,32 \
		--out results/cpu/profile-compile
	$(BIN)/bench sweep results/configs/cpu-budget.yaml --no-report
	$(BIN)/bench sweep results/configs/cpu-budget-onednn.yaml --no-report
	$(BIN)/bench report results/cpu/runs results/cpu/runs-onednn results/cpu/runs-code --out results/cpu \
		--against lookahead --against spec-bench --against llm-to-slm

# The training-free drafters on CPU (about an hour here): a REST datastore from the WMT 2015-2019 English
# references and tiny_corpus (datastores/, not committed), then token-recycling, suffix, rest, jacobi and layerskip on
# Spec-Bench's six groups (results/configs/cpu-training-free.yaml), and on qwen2.5-coder-1.5b with draft-model trees
# (cpu-training-free-qwen.yaml); the CPU table gains their rows.
DATASTORE = datastores/smollm2-135m-wmt
reproduce-training-free-cpu: setup
	test -f $(DATASTORE)/datastore.json || $(BIN)/bench datastore build --model smollm2-135m --field ref \
		$(foreach y,2015 2016 2017 2018 2019,--from $${DECODEBENCH_DATA:-../shared/data}/wmt_de_en/newstest$(y).de-en.jsonl) \
		--from $${DECODEBENCH_DATA:-../shared/data}/tiny_corpus/tinyshakespeare.txt \
		--from $${DECODEBENCH_DATA:-../shared/data}/tiny_corpus/tinystories_sample.txt --out $(DATASTORE)
	$(BIN)/bench sweep results/configs/cpu-training-free.yaml --no-report
	$(BIN)/bench sweep results/configs/cpu-training-free-qwen.yaml --no-report
	$(BIN)/bench report results/cpu/runs results/cpu/runs-onednn results/cpu/runs-code --out results/cpu \
		--against lookahead --against spec-bench --against llm-to-slm

# The trained drafters on CPU: an EAGLE draft layer and 3 Medusa heads for smollm2-135m, self-distilled on 192 prompts
# of the default mix (WMT 2015-2019, GSM8K outside Spec-Bench, TinyStories; Medusa reuses EAGLE's answers), into ckpt/
# (not committed); then medusa, eagle and eagle2 at three tree sizes each on Spec-Bench's six groups
# (results/configs/cpu-drafters.yaml), the CPU table and the tree-size figure. EAGLE's lr is 5e-4, not the
# reference's 3e-5 (a schedule of 800k steps; this run has 400).
DRAFTERS_TRAIN = --model smollm2-135m --prompts 192 --threads 1
# qwen2.5-coder-1.5b's code drafters: 320 HumanEval-shaped openings from Python's standard library
# (scripts/code_prompts.py), 96-token answers, bf16 target with mixed-precision training
CODE_EAGLE_STEPS = 400
CODE_MEDUSA_STEPS = 120
CODE_TRAIN = --model qwen2.5-coder-1.5b --dtype bfloat16 --data ckpt/data/stdlib-code-prompts.jsonl --answer-tokens 96 \
	--eval-samples 16 --eval-every 50 --save-every 25
reproduce-drafters-cpu: setup
	$(BIN)/bench train eagle $(DRAFTERS_TRAIN) --steps 400 --lr 5e-4 --eval-every 50 --save-every 50 --out ckpt/eagle-smollm2-135m
	$(BIN)/bench train medusa $(DRAFTERS_TRAIN) --steps 150 --eval-every 25 --save-every 25 --answers-from ckpt/eagle-smollm2-135m \
		--out ckpt/medusa-smollm2-135m
	$(BIN)/bench train eagle --model qwen2.5-coder-1.5b --prompts 96 --answer-tokens 96 --steps 120 --lr 5e-4 \
		--eval-samples 8 --eval-every 20 --save-every 20 --threads 1 --out ckpt/eagle-qwen2.5-coder-1.5b
	$(BIN)/python scripts/code_prompts.py --out ckpt/data/stdlib-code-prompts.jsonl --prompts 320
	$(BIN)/bench train eagle $(CODE_TRAIN) --steps $(CODE_EAGLE_STEPS) --lr 5e-4 --out ckpt/eagle-qwen2.5-coder-1.5b-code
	$(BIN)/bench train medusa $(CODE_TRAIN) --steps $(CODE_MEDUSA_STEPS) --answers-from ckpt/eagle-qwen2.5-coder-1.5b-code \
		--out ckpt/medusa-qwen2.5-coder-1.5b-code
	mkdir -p results/cpu/drafters
	for d in eagle-smollm2-135m medusa-smollm2-135m eagle-qwen2.5-coder-1.5b eagle-qwen2.5-coder-1.5b-code \
		medusa-qwen2.5-coder-1.5b-code; do \
		for f in checkpoint.json history.csv loss.png; do cp ckpt/$$d/$$f results/cpu/drafters/$$d-$$f || exit 1; done; \
		sha256sum ckpt/$$d/*.safetensors ckpt/$$d/medusa_lm_head.pt 2>/dev/null; \
	done > results/cpu/drafters/SHA256SUMS
	$(BIN)/bench sweep results/configs/cpu-drafters.yaml --no-report
	$(BIN)/bench sweep results/configs/cpu-drafters-qwen.yaml --no-report
	$(BIN)/bench sweep results/configs/cpu-drafters-code.yaml --no-report
	$(BIN)/bench report results/cpu/runs results/cpu/runs-onednn results/cpu/runs-code --out results/cpu \
		--against lookahead --against spec-bench --against llm-to-slm
	$(BIN)/python scripts/plot_tree_size.py results/cpu/summary.csv --out results/cpu/tree_size.png

# The compression table (issue: weight-only quantization, batch and context sweeps, quantized self-drafts, llama.cpp):
# results/quant/ (table.md, summary.csv, batch_speedup.png, speed_quality.png). Needs the llamacpp extra (built by
# `make test`). Both engines get 2 threads; llama.cpp's threads spin-wait, so time it on an otherwise idle machine.
reproduce-quant-cpu: setup $(VENV)/.llamacpp
	$(BIN)/bench sweep results/configs/quant-cpu-smollm2.yaml --no-report
	$(BIN)/bench sweep results/configs/quant-cpu-qwen.yaml --no-report
	$(BIN)/bench report results/quant/runs --out results/quant
	$(BIN)/python scripts/quant_table.py results/quant/summary.csv --out results/quant

# Spec-Bench's per-group table (6 groups + overall) with 3 repeats, CPU-sized (about 25 minutes here).
reproduce-specbench-groups: setup
	$(BIN)/bench sweep results/configs/specbench-groups.yaml --no-report
	$(BIN)/bench report results/specbench-groups/runs --out results/specbench-groups --against spec-bench

# LLM-to-SLM on CPU (about 2.5 hours here): qwen2.5-coder-0.5b -> smollm2-135m (different tokenizers: the aligned
# bridge), against the same SLM fine-tuned alone with the same data (newstest2015-2019, 64 lines held out) and steps,
# scored on the first 200 lines of newstest2014. The LLM as is runs interleaved with LLM-to-SLM in one process (the
# speedup); the other systems run alone on the same lines. A named variant, --feature-norm, is trained and scored;
# --llm-layer 12 and 18 (with --feature-norm) are 60-step probes, compared on the held-out loss. The LLM fine-tuned with LoRA, same data and steps, is in the
# committed table (about an hour more; L2S_LLM_FT= skips it).
# The larger LLM, qwen2.5-coder-1.5b -> smollm2-135m (--feature-norm, same data and steps; about 1.5 hours, most of it
# the LLM's features, cached): scored on the same 200 lines without baseline, its speedup measured interleaved with
# the 1.5B LLM's own greedy decoding on the first L2S_SPEED_LIMIT lines (the 1.5B AR on 200 lines alone is ~40 min).
L2S_STEPS ?= 160
L2S_CKPT ?= ckpt
L2S_LLM_FT ?= yes
L2S_PROBE_LAYERS ?= 12 18
L2S_TRAIN = --task wmt --steps $(L2S_STEPS) --lr 2e-4 --eval-samples 64 --eval-every 20 --save-every 40
L2S_EVAL = --task wmt --limit 200 --max-new-tokens 96
L2S_RUNS = results/llm2slm/runs
L2S_PAIR = --llm qwen2.5-coder-0.5b --slm smollm2-135m $(L2S_TRAIN) --cache-features
L2S_PAIR15 = --llm qwen2.5-coder-1.5b --slm smollm2-135m $(L2S_TRAIN) --cache-features
L2S_SPEED_LIMIT ?= 20
reproduce-llm2slm-cpu: setup
	$(BIN)/bench train llm2slm $(L2S_PAIR) --out $(L2S_CKPT)/llm2slm-qwen05-smollm2
	$(BIN)/bench train slm --slm smollm2-135m $(L2S_TRAIN) --out $(L2S_CKPT)/slm-smollm2
	$(BIN)/bench run --method llm2slm --checkpoint $(L2S_CKPT)/llm2slm-qwen05-smollm2 $(L2S_EVAL) \
		--out $(L2S_RUNS)/llm2slm-qwen05-smollm2
	$(BIN)/bench run --method ar --model $(L2S_CKPT)/slm-smollm2 $(L2S_EVAL) --out $(L2S_RUNS)/slm-smollm2
	$(BIN)/bench train llm2slm $(L2S_PAIR) --feature-norm --out $(L2S_CKPT)/llm2slm-qwen05-smollm2-norm
	$(BIN)/bench run --method llm2slm --checkpoint $(L2S_CKPT)/llm2slm-qwen05-smollm2-norm $(L2S_EVAL) \
		--no-baseline --out $(L2S_RUNS)/llm2slm-qwen05-smollm2-norm
	for layer in $(L2S_PROBE_LAYERS); do \
		$(BIN)/bench train llm2slm $(L2S_PAIR) --steps 60 --save-every 20 --feature-norm --llm-layer $$layer \
			--out $(L2S_CKPT)/llm2slm-qwen05-smollm2-norm-layer$$layer-probe || exit 1; \
	done
	if [ -n "$(L2S_LLM_FT)" ]; then \
		$(BIN)/bench train slm --slm qwen2.5-coder-0.5b --slm-tuning lora $(L2S_TRAIN) --out $(L2S_CKPT)/lora-qwen05 && \
		$(BIN)/bench run --method ar --model $(L2S_CKPT)/lora-qwen05 $(L2S_EVAL) --out $(L2S_RUNS)/lora-qwen05; \
	fi
	$(BIN)/bench train llm2slm $(L2S_PAIR15) --feature-norm --out $(L2S_CKPT)/llm2slm-qwen15-smollm2-norm
	$(BIN)/bench run --method llm2slm --checkpoint $(L2S_CKPT)/llm2slm-qwen15-smollm2-norm $(L2S_EVAL) \
		--no-baseline --out $(L2S_RUNS)/llm2slm-qwen15-smollm2-norm
	$(BIN)/bench run --method llm2slm --checkpoint $(L2S_CKPT)/llm2slm-qwen15-smollm2-norm --task wmt \
		--limit $(L2S_SPEED_LIMIT) --max-new-tokens 96 --out $(L2S_RUNS)/llm2slm-qwen15-smollm2-norm-speed
	$(BIN)/python scripts/llm2slm_table.py --out results/llm2slm --pair "qwen2.5-coder-0.5b -> smollm2-135m" \
		llm2slm=$(L2S_RUNS)/llm2slm-qwen05-smollm2 slm=$(L2S_RUNS)/slm-smollm2 \
		llm2slm-norm=$(L2S_RUNS)/llm2slm-qwen05-smollm2-norm \
		$(if $(L2S_LLM_FT),llm_ft=$(L2S_RUNS)/lora-qwen05) \
		--pair "qwen2.5-coder-1.5b -> smollm2-135m" llm2slm=$(L2S_RUNS)/llm2slm-qwen15-smollm2-norm-speed \
		slm=$(L2S_RUNS)/slm-smollm2 \
		--pair "qwen2.5-coder-1.5b -> smollm2-135m (200 lines)" llm2slm=$(L2S_RUNS)/llm2slm-qwen15-smollm2-norm \
		slm=$(L2S_RUNS)/slm-smollm2
	$(BIN)/python scripts/plot_loss.py $(L2S_CKPT)/llm2slm-qwen05-smollm2 $(L2S_CKPT)/slm-smollm2 \
		$(L2S_CKPT)/llm2slm-qwen05-smollm2-norm $(L2S_CKPT)/llm2slm-qwen15-smollm2-norm \
		$(foreach layer,$(L2S_PROBE_LAYERS),$(L2S_CKPT)/llm2slm-qwen05-smollm2-norm-layer$(layer)-probe) \
		$(if $(L2S_LLM_FT),$(L2S_CKPT)/lora-qwen05) --out results/llm2slm/loss.png
	$(BIN)/bench report $(L2S_RUNS) --out results/llm2slm --against llm-to-slm

# The papers' own setups: needs CUDA GPUs and hub access (gated Llama-2 / CodeLlama weights).
PAPERS ?= lookahead spec-bench
reproduce-all: setup
	for paper in $(PAPERS); do \
		$(BIN)/bench sweep results/configs/$$paper.yaml --no-report && \
		$(BIN)/bench report results/$$paper/runs --out results/$$paper --against $$paper || exit 1; \
	done

# The one-shot check of the CUDA paths on a lent GPU machine (docs/gpu.md): the `cuda` tests and the cost curve of
# Vicuna-7B's shape, under 8 minutes, everything in gpu-check/. No `setup`: that machine has no network.
gpu-check:
	bash scripts/gpu_check.sh

# The same steps on CPU at tiny sizes (the CUDA tests skip): checks the script itself, in under a minute.
gpu-check-dry:
	bash scripts/gpu_check.sh --dry-run

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
