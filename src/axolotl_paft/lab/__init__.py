"""Lab code: what the project's tests, demo and benchmarks build, never imported by
what runs inside a user's `axolotl train` (the plugin, its trainer, report, merge
configs and search).

- `toy`: tiny randomly initialised models and data for the fast tests;
- `world`: the miniature world (a pre-trained tiny Llama, its skills and preference);
- `hub`: a local folder named by a hub id, offline (the HF cache layout);
- `smollm2`: SmolLM2-135M-Instruct, a real pretrained chat model, from PyPI;
- `demo`: the end-to-end demo;
- `bench`: what the benchmark scripts (`benchmarks/<question>/`) share.
"""
