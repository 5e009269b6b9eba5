"""Cross-modality restoration (confocal -> STED, CARE-style): pairs, network and training."""
