"""MM-Net's meta-class memory (Wu et al., ICCV 2021) as pure functions and a module.

The memory M [D, N] holds N learnable meta-class embeddings shared by every
class. Pixels are described by their activations against the memory, the
support's activations are propagated to the query through the support mask,
and the K shots are combined per query pixel by an image-quality weight.

Shapes: features are flattened to [B, P, D] (P pixels), activations are
[B, P, N]; masks are [B, P] soft weights at feature resolution.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# The official code's constants: the cosine denominator's epsilon and the
# value given to masked-out (exactly zero) similarities before the softmax.
COSINE_EPS = 1e-7
MASKED = -1e9


def _norm(x: jax.Array) -> jax.Array:
  """L2 norm over the last axis with a finite gradient at the zero vector (ReLU features can
  be all zero at a pixel); the value differs from the exact norm only below 1e-15."""
  return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1), 1e-30))


def activation_maps(memory: jax.Array, feats: jax.Array) -> jax.Array:
  """A[b, p, n] = <F[b, p], M[:, n]>: [D, N] memory, [B, P, D] features -> [B, P, N]."""
  return jnp.einsum('bpd,dn->bpn', feats, memory)


def reconstruction_loss(memory: jax.Array, feats: jax.Array, block: int = 0) -> jax.Array:
  """How well the memory reconstructs the features, as a pixel-identification cross-entropy.

  R[b, i] = M softmax_n(A[b, i]) reconstructs pixel i from the meta-classes;
  G[b, i, j] = <R[b, i], F[b, j]>. For every original pixel j the
  reconstructed pixels i are the classes and the target is i = j (the
  official code's F.cross_entropy on G with the class axis on i). Mean over
  pixels and images.

  Computed in an exactly equal, cheaper form: G[i, j] = softmax(A[i]) . A[j]
  (since M^T F[j] = A[j]), a rank-N product (N = 50) instead of the official
  rank-D one (D = 256), and the loss is mean_j(logsumexp_i G[i, j] - G[j, j]).
  With `block` > 0 the columns j are taken `block` at a time (recomputed in
  the backward pass), so no [P, P] matrix is ever held: memory O(P x block)
  instead of O(P^2) per image, for the same value.

  Args:
    memory: [D, N].
    feats: [B, P, D].
    block: column block size; 0 (or >= P) forms G whole.
  """
  act = activation_maps(memory, feats).astype(jnp.float32)
  probs = jax.nn.softmax(act, axis=-1)
  own = jnp.sum(probs * act, axis=-1)  # G[j, j]
  p = act.shape[1]
  if not block or block >= p:
    lse = jax.nn.logsumexp(jnp.einsum('bin,bjn->bij', probs, act), axis=1)  # Over reconstructed i.
  else:
    lse = _column_logsumexp(probs, act, block)
  return jnp.mean(lse - own)


def _column_logsumexp(probs: jax.Array, act: jax.Array, block: int) -> jax.Array:
  """logsumexp_i probs[b, i] . act[b, j] for every column j, `block` columns at a time: [B, P]."""
  b, p, n = act.shape
  blocks = -(-p // block)
  cols = jnp.pad(act, ((0, 0), (0, blocks * block - p), (0, 0))).reshape(b, blocks, block, n)

  @jax.checkpoint  # Keeps only each block's inputs for the backward pass.
  def one(c):  # [B, block, N] -> [B, block]
    return jax.nn.logsumexp(jnp.einsum('bin,bjn->bji', probs, c), axis=-1)

  lse = jax.lax.map(one, jnp.moveaxis(cols, 1, 0))  # [blocks, B, block]
  return jnp.moveaxis(lse, 0, 1).reshape(b, blocks * block)[:, :p]


def propagate(query_act: jax.Array, support_act: jax.Array, support_mask: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
  """Support-to-query propagation of meta-class activations for one shot.

  S[i, j] = cos(a_q[i], a_s[j]) * mask[j]; exact zeros (masked pixels) become
  -1e9; the propagated map is softmax_j(S) sigmoid(A_s), and the shot's
  quality logit at query pixel i is sum_j sigmoid(S[i, j]).

  Args:
    query_act: [B, Pq, N] query activations.
    support_act: [B, Ps, N] support activations.
    support_mask: [B, Ps] support foreground weights at feature resolution.

  Returns:
    (propagated [B, Pq, N], quality logit [B, Pq]). With an all-zero mask the
    propagated map is the mean of sigmoid(A_s) and the quality logit is 0.
  """
  dot = jnp.einsum('bin,bjn->bij', query_act, support_act)
  norms = _norm(query_act)[:, :, None] * _norm(support_act)[:, None, :]
  sim = dot / (norms + COSINE_EPS) * support_mask[:, None, :]
  sim = jnp.where(sim == 0, MASKED, sim)
  propagated = jnp.einsum('bij,bjn->bin', jax.nn.softmax(sim, axis=-1), jax.nn.sigmoid(support_act))
  return propagated, jnp.sum(jax.nn.sigmoid(sim), axis=-1)


def quality_weights(logits: jax.Array) -> jax.Array:
  """[B, K, Pq] per-shot quality logits -> weights, a softmax over the K shots per query pixel."""
  return jax.nn.softmax(logits, axis=1)


class MetaClassMemory(nn.Module):
  """The learnable memory and the query's meta-class maps.

  Attributes:
    dim: feature width D (256 in MM-Net).
    num_items: number of meta-classes N (50 in MM-Net).
    init_std: the memory is initialised N(0, init_std^2) (MM-Net: 1).
    recon_block: the reconstruction loss's column block (0: whole [P, P];
      see reconstruction_loss).
  """

  dim: int = 256
  num_items: int = 50
  init_std: float = 1.0
  recon_block: int = 0

  @nn.compact
  def __call__(self, query_feats: jax.Array, support_feats: jax.Array, support_masks: jax.Array,
               *, compute_loss: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Meta-class maps Z = sigmoid(A_q) * sum_k w_k propagated_k.

    Args:
      query_feats: [B, h, w, D].
      support_feats: [B, K, h, w, D].
      support_masks: [B, K, h, w] foreground weights at feature resolution.

    Returns:
      (Z [B, h, w, N], {'shot_weights': [B, K, h, w], and with compute_loss
      'recon_loss' [], the mean over every support shot and the query}).
    """
    b, k, h, w, d = support_feats.shape
    if d != self.dim or query_feats.shape != (b, h, w, d):
      raise ValueError(f'MetaClassMemory: expected query [B, h, w, {self.dim}] and support '
                       f'[B, K, h, w, {self.dim}], got {query_feats.shape} and {support_feats.shape}')
    memory = self.param('memory', nn.initializers.normal(self.init_std), (self.dim, self.num_items),
                        jnp.float32)
    memory = memory.astype(query_feats.dtype)
    q = query_feats.reshape(b, h * w, d)
    s = support_feats.reshape(b, k, h * w, d)
    q_act = activation_maps(memory, q)
    props, logits = [], []
    for shot in range(k):  # K is small and static; each shot uses its own mask.
      s_act = activation_maps(memory, s[:, shot])
      prop, logit = propagate(q_act, s_act, support_masks[:, shot].reshape(b, h * w))
      props.append(prop)
      logits.append(logit)
    weights = quality_weights(jnp.stack(logits, axis=1).astype(jnp.float32))  # [B, K, P]
    mixed = jnp.einsum('bkp,bkpn->bpn', weights.astype(q_act.dtype), jnp.stack(props, axis=1))
    z = (jax.nn.sigmoid(q_act) * mixed).reshape(b, h, w, self.num_items)
    aux = {'shot_weights': weights.reshape(b, k, h, w)}
    if compute_loss:  # [P, P] per image: only when training.
      aux['recon_loss'] = reconstruction_loss(
          memory, jnp.concatenate([s.reshape(b * k, h * w, d), q], axis=0), self.recon_block)
    return z, aux
