"""Party data: the synthetic generator, each party's table on disk, local preprocessing,
alignment of rows between parties and the shared train/test split."""
