"""Models: transformer layers, Meta's MTP transformer, LLaMA (causal LM and value model), their
presets, and the per-layer ↔ ``nn.scan`` parameter layouts."""
