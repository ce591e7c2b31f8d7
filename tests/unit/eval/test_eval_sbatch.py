"""slurm/eval.sbatch in paper-suite mode: tide-eval --suite paper on every SLURM task (data parallel), with the
local datasets, the paper column and the unsafe-code switch only when asked for."""

from tests.unit.slurm.test_launchers import fake_slurm  # noqa: F401  (the fake SLURM fixture)


def test_the_paper_suite_job(fake_slurm):  # noqa: F811
    proc, calls = fake_slurm.run("eval.sbatch", "ckpt/student_hf", "--limit", "5", SLURM_NTASKS=2,
                                 SLURM_NTASKS_PER_NODE=2, TIDE_EVAL_SUITE="paper", TIDE_DATA_DIR="datasets",
                                 TIDE_PAPER_VARIANT="TIDE-Cross (A)", TIDE_CONFIRM_UNSAFE_CODE=1)
    assert proc.returncode == 0, proc.stderr
    evals = [c for c in calls if c["prog"] == "tide-eval"]
    assert sorted(c["env"]["RANK"] for c in evals) == ["0", "1"]  # one process per task: data parallel
    argv = evals[0]["argv"]
    assert argv[:4] == ["--hf-dir", "ckpt/student_hf", "--suite", "paper"]
    assert argv[argv.index("--output") + 1] == str(fake_slurm.root / "runs" / "eval" / "student_hf" / "paper.json")
    assert argv[argv.index("--data-dir") + 1] == "datasets"
    assert argv[argv.index("--paper-variant") + 1] == "TIDE-Cross (A)"
    assert "--confirm-run-unsafe-code" in argv and argv[-2:] == ["--limit", "5"]
    proc, calls = fake_slurm.run("eval.sbatch", "ckpt/student_hf", SLURM_NTASKS=1, SLURM_NTASKS_PER_NODE=1,
                                 TIDE_EVAL_SUITE="paper")
    (argv,) = [c["argv"] for c in calls if c["prog"] == "tide-eval"]
    assert proc.returncode == 0 and "--confirm-run-unsafe-code" not in argv and "--data-dir" not in argv
