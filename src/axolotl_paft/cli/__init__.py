"""The console scripts: `axolotl-paft-eval` (`eval`) and `axolotl-paft-sweep`
(`sweep`)."""
