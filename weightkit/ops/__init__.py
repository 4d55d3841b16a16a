"""Operations on checkpoints, one module per command."""
