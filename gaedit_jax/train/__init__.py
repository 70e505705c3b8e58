"""What both training stages (reconstruct, edit) share: the output folder guard and lock
(run_dir.py) and a run's bookkeeping (run.py: checkpoints, resume, progress, timing, summaries)."""
