"""Evaluation tasks, one module each; `tasks.base.TASKS` finds them (and entry-point plugins) on first lookup."""
