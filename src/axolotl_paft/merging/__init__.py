"""The work after training: mergekit configs (`configs`), search candidates built
in memory (`inmemory`), held-out scoring (`scoring`), the search strategy
(`search`), its leaderboard files (`leaderboard`), one-adapter export (`export`),
the lm-eval objective (`lm_eval_objective`), the sparsity report (`report`) and
what a run leaves in `output_dir` (`outputs`)."""
