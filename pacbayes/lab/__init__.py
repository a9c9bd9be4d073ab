"""The synthetic difficulty study: pretraining, SFT/DFT, grids, evaluation by slice."""
