"""The training side, what runs inside `axolotl train`: the two named LoRAs
(`adapters`), the preference data (`data`), the losses (`losses`), the parallel
trainer (`trainer`), the final save under FSDP2 (`sharded`), the L1 penalty
(`l1`) and the delta measurement its logs and the report share (`sparsity`)."""
