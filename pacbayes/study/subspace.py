"""Random-subspace fine-tuning: w = w_base + P z with a fixed hashed projection P and z in R^d.

Fine-tuning in a random low-dimensional subspace (Li et al. 2018; Aghajanyan et al. 2021 for
language models) keeps the trainable dimension d small, which is what makes a Gaussian
PAC-Bayes bound informative: with Q = N(z_ft, s^2 I_d) and P = N(0, sigma_p^2 I_d) the KL grows
with ||z_ft||^2 and d, not with the millions of weights (Lotfi et al. 2022 use the same device
for non-vacuous bounds).

The projection is a count sketch: weight j (over all leaves, flattened) follows coordinate
h(j) of z with a random sign, scaled by 1/sqrt(#weights on that coordinate) (about
sqrt(d / D)) so that every column of P has unit norm and the columns are orthogonal (disjoint
supports). P z is then a gather, O(D) per draw, so
Monte-Carlo posterior draws cost no more than in weight space.

References:
  Li, Farkhoor, Liu, Yosinski (2018), "Measuring the intrinsic dimension of objective
  landscapes", ICLR.
  Aghajanyan, Zettlemoyer, Gupta (2021), "Intrinsic dimensionality explains the effectiveness
  of language model fine-tuning", ACL.
  Lotfi, Finzi, Kapoor, Potapczynski, Goldblum, Wilson (2022), "PAC-Bayes compression bounds
  so tight that they can explain generalization", NeurIPS.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Subspace:
  """A fixed hashed projection from R^dim into the weights of one parameter pytree.

  Attributes:
    dim: d, the trainable dimension.
    index: pytree like the parameters of int32 arrays: the z coordinate each weight follows.
    scale: pytree like the parameters of float32 arrays: +-1/sqrt(column size) per weight.
    num_weights: D, the number of weights spanned.
  """

  dim: int
  index: Any
  scale: Any
  num_weights: int


def make_subspace(params: Any, dim: int, *, key: jax.Array) -> Subspace:
  """Draws the hashed projection for a parameter pytree (every floating leaf).

  Args:
    params: the parameter pytree (shapes only are used).
    dim: the subspace dimension d >= 1.
    key: PRNG key of the hash and the signs.

  Returns:
    A `Subspace`; coordinates are assigned by a random permutation of a balanced cycle, so
    every coordinate of z drives floor(D/d) or ceil(D/d) weights.
  """
  if not isinstance(dim, int | np.integer) or dim < 1:
    raise ValueError(f"dim: expected a positive integer, got {dim!r}")
  leaves, treedef = jax.tree.flatten(params)
  sizes = [int(np.size(x)) for x in leaves]
  total = int(sum(sizes))
  if dim > total:
    raise ValueError(f"dim: {dim} exceeds the number of weights {total}")
  k_perm, k_sign = jax.random.split(key)
  coords = np.asarray(jax.random.permutation(k_perm, np.arange(total) % dim)).astype(np.int32)
  signs = np.where(np.asarray(jax.random.bernoulli(k_sign, 0.5, (total,))), 1.0, -1.0)
  counts = np.bincount(coords, minlength=dim)
  signs = (signs / np.sqrt(counts[coords])).astype(np.float32)
  index, scale, start = [], [], 0
  for leaf, size in zip(leaves, sizes, strict=True):
    shape = np.shape(leaf)
    index.append(jnp.asarray(coords[start:start + size].reshape(shape)))
    scale.append(jnp.asarray(signs[start:start + size].reshape(shape)))
    start += size
  return Subspace(dim=int(dim), index=jax.tree.unflatten(treedef, index),
                  scale=jax.tree.unflatten(treedef, scale), num_weights=total)


def expand(subspace: Subspace, base_params: Any, z_D: jax.Array) -> Any:
  """Weights w = base + P z (jit-able; differentiable in z)."""
  return jax.tree.map(
    lambda w, idx, s: (w.astype(jnp.float32) + s * z_D[idx]).astype(w.dtype),
    base_params, subspace.index, subspace.scale,
  )


def zeros(subspace: Subspace) -> dict[str, jax.Array]:
  """The origin z = 0 as a parameter pytree {"z": [d] float32} (the prior mean)."""
  return {"z": jnp.zeros((subspace.dim,), jnp.float32)}


def subspace_apply(graphdef: Any, rest: Any, base_params: Any, subspace: Subspace):
  """apply({"z": z}, input_ids, attention_mask) -> logits of the model at base + P z.

  Build it once per base and reuse it: compiled steps are cached on its identity.
  """
  from flax import nnx

  def apply(zp, input_ids_BxL, attention_mask_BxL):
    params = expand(subspace, base_params, zp["z"])
    model = nnx.merge(graphdef, params, rest)
    return model(input_ids_BxL, attention_mask=attention_mask_BxL)

  return apply

