// GRU4RecPaper's fused training step (recbole_gru4rec/steps/fused.py) in C++, many steps per call.
//
// On a CPU a session-parallel step is a few dozen operations on tensors of a few thousand values, and calling
// each from Python costs about as much as its arithmetic. Here a whole chunk of steps runs in one call: the
// matrix products and the vectorised sigmoid / tanh / exp stay ATen calls; the gathers, the loss gradients,
// the GRU backward and the Adagrad updates are plain loops; where many scored columns repeat an item, the products
// with their weights and the loss are taken once per distinct item (ScoredItems, Negatives); and with two or more
// intra-op threads the forward's recurrent part runs beside the gather of the scored items, the backward as two
// independent halves side by side, the loss and the row updates split by rows. The extension also draws the sampler's items (inverse_cdf).
// The arithmetic is the fused step's, and the dropout masks are drawn from torch's default generator in the
// fused step's order, so both make the same updates up to float rounding (tests/test_fused_step.py).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <tuple>
#include <vector>
#ifdef STEP_TIMERS
#include <chrono>
#include <string>
#include <utility>
#endif

namespace {

using at::Tensor;

// Timers for profiling (benchmarks/step_profile.py --timers builds with -DSTEP_TIMERS; without it they compile to
// nothing): the seconds spent in each part of the step, summed over calls, read with timers(). SCOPE_TIMER times
// the rest of a block; LAP_TIMER the time since the block's START_LAPS or previous lap. Parts timed in the two
// halves of a step overlap in time.
#ifdef STEP_TIMERS
enum TimedPart { STEP, CARRIED_STATE, DROPOUT_MASKS, FORWARD, GRU_FORWARD, SCORED_GATHER, SCORES, LOSS,
                 PER_ITEM_SUMS, BACKWARD, OUTPUT_HALF, OUTPUT_PRODUCT, OUTPUT_UPDATES, REST_HALF, REST_PRODUCT,
                 GRU_BACKWARD, DENSE_UPDATES, SHARED_ROWS, N_TIMED_PARTS };
const char* const part_names[N_TIMED_PARTS] = {  // indented under the part they belong to
    "step", "carried state", "dropout masks", "forward", "  GRU forward", "  gather of the scored items", "scores",
    "loss", "gradients summed per item", "backward", "  output half", "    product to the output rows",
    "    output row updates", "  rest half", "    product to the GRU output", "    GRU backward",
    "    dense and input row updates", "shared rows"};
double part_seconds[N_TIMED_PARTS];
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }
struct ScopeTimer {
  TimedPart part;
  Clock::time_point start = Clock::now();
  ~ScopeTimer() { part_seconds[part] += seconds_since(start); }
};
#define SCOPE_TIMER(part) ScopeTimer scope_timer_{part}
#define START_LAPS() Clock::time_point lap_start_ = Clock::now()
#define LAP_TIMER(part) (part_seconds[part] += seconds_since(lap_start_), lap_start_ = Clock::now())
std::vector<std::pair<std::string, double>> timers() {
  std::vector<std::pair<std::string, double>> out;
  for (int part = 0; part < N_TIMED_PARTS; ++part) out.emplace_back(part_names[part], part_seconds[part]);
  return out;
}
#else
#define SCOPE_TIMER(part)
#define START_LAPS()
#define LAP_TIMER(part)
#endif

enum Loss { CROSS_ENTROPY = 0, TOP1 = 1, BPR = 2, TOP1_MAX = 3, BPR_MAX = 4 };  // steps/cpp.py: LOSS_CODES
enum Activation { LINEAR = 0, TANH = 1, ELU = 2, RELU = 3, LEAKY = 4, SELU = 5 };  // steps/activations.py
// The first layer's input: 1-of-N (rows of W_ih, one per item), a learned embedding, or the output weights
// as the embedding (constrained_embedding).
enum Input { ONE_HOT = 0, EMBEDDING = 1, SHARED_EMBEDDING = 2 };

struct Settings {
  Input input;
  int64_t num_layers;
  bool feedforward, reset_before;
  Loss loss;
  bool remove_accidental_hits;
  int64_t loss_divisor;  // a step's summed loss over this (the batch size); 0: over its rows with a negative
  double bpreg;  // BPR-max's score regularisation
  Activation activation;
  double alpha, scale;  // ELU / SELU alpha or the leaky slope; SELU's lambda (1 otherwise)
  double logq, sample_alpha;
  double dropout_input, dropout_hidden;
  float lr, momentum, eps;
};

// The dense parameters, in the order of FusedTrainingStep.dense_params: the first layer's input (b_ih for the
// 1-of-N input; W_ih and b_ih after an embedding), (W_hh, b_hh) of each GRU layer, (W_ih, b_ih) of each upper
// layer, then the feedforward layer's (W, b). (The output bias is updated at the scored items only, as a
// one-column RowParameter.)
// The *_at functions give a parameter's index there, which is also its gradient's index in a step.
struct Parameters {
  const std::vector<Tensor>& dense;
  int64_t layers;
  bool embedded;
  static constexpr int64_t input_weight_at = 0;  // only after an embedding
  int64_t input_bias_at() const { return embedded ? 1 : 0; }
  int64_t hidden_weight_at(int64_t layer) const { return input_bias_at() + 1 + 2 * layer; }
  // the layer feeding layer + 1
  int64_t upper_weight_at(int64_t layer) const { return input_bias_at() + 1 + 2 * layers + 2 * layer; }
  int64_t feedforward_weight_at() const { return input_bias_at() + 4 * layers - 1; }  // each bias follows its weight
  const Tensor& input_weight() const { return dense[input_weight_at]; }
  const Tensor& input_bias() const { return dense[input_bias_at()]; }
  const Tensor& hidden_weight(int64_t layer) const { return dense[hidden_weight_at(layer)]; }
  const Tensor& hidden_bias(int64_t layer) const { return dense[hidden_weight_at(layer) + 1]; }
  const Tensor& upper_weight(int64_t layer) const { return dense[upper_weight_at(layer)]; }
  const Tensor& upper_bias(int64_t layer) const { return dense[upper_weight_at(layer) + 1]; }
  const Tensor& feedforward_weight() const { return dense[feedforward_weight_at()]; }
  const Tensor& feedforward_bias() const { return dense[feedforward_weight_at() + 1]; }
};

// An item-indexed weight matrix with its Adagrad state; only the rows a step touches are updated.
struct RowParameter {
  Tensor weight, sum, velocity;  // velocity undefined without momentum
  explicit RowParameter(const std::vector<Tensor>& tensors)
      : weight(tensors[0]), sum(tensors[1]), velocity(tensors.size() > 2 ? tensors[2] : Tensor()) {}
};

// An item -> int map over the whole catalog, allocated once per call of train_steps; after each use only the
// entries that use set are reset, so a step costs time in the number of its items, not of the catalog's.
struct ItemSlots {
  std::vector<int32_t> slot;
  std::vector<int64_t> touched;
  explicit ItemSlots(int64_t n_items) : slot(n_items, -1) {}
  int32_t get(int64_t item) const { return slot[item]; }
  void set(int64_t item, int32_t value) {
    if (slot[item] < 0) touched.push_back(item);
    slot[item] = value;
  }
  void clear() {
    for (int64_t item : touched) slot[item] = -1;
    touched.clear();
  }
};

// AdagradMomentum's update of n values (adagrad_dense_ / adagrad_rows_): s += g^2; step = g / sqrt(s + eps);
// with momentum v = m v + lr step, p -= v; without, p -= lr step.
void adagrad_update(float* __restrict__ param, float* __restrict__ sum, float* __restrict__ velocity,
                    const float* __restrict__ grad, int64_t n, const Settings& s) {
  const float lr = s.lr, momentum = s.momentum, eps = s.eps;
  if (velocity) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float total = sum[i] + grad[i] * grad[i];
      sum[i] = total;
      velocity[i] = velocity[i] * momentum + lr * (grad[i] / std::sqrt(total + eps));
      param[i] -= velocity[i];
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float total = sum[i] + grad[i] * grad[i];
      sum[i] = total;
      param[i] -= lr * (grad[i] / std::sqrt(total + eps));
    }
  }
}

void adagrad_dense(Tensor& param, const Tensor& grad, Tensor& sum, Tensor* velocity, const Settings& s) {
  Tensor g = grad.contiguous();
  adagrad_update(param.data_ptr<float>(), sum.data_ptr<float>(), velocity ? velocity->data_ptr<float>() : nullptr,
                 g.data_ptr<float>(), param.numel(), s);
}

// AdagradMomentum on ``n`` distinct rows of an item-indexed matrix (adagrad_rows_), row rows[d] with the ``width``
// values from ``grads`` + d * width; rows marked in ``leave_out`` are skipped. The rows are split between the
// intra-op threads.
void adagrad_distinct_rows(RowParameter& param, const int64_t* rows, int64_t n, const float* grads, const Settings& s,
                           const ItemSlots* leave_out = nullptr) {
  const int64_t width = param.weight.size(1);
  float* weight = param.weight.data_ptr<float>();
  float* acc = param.sum.data_ptr<float>();
  float* velocity = param.velocity.defined() ? param.velocity.data_ptr<float>() : nullptr;
  if (width == 1) {  // the output bias: one call per value would not vectorise, so gather, update, scatter back
    std::vector<int64_t> kept;
    std::vector<float> values, sums, velocities, kept_grads;
    for (int64_t d = 0; d < n; ++d) {
      if (leave_out && leave_out->get(rows[d]) >= 0) continue;
      kept.push_back(rows[d]);
      values.push_back(weight[rows[d]]);
      sums.push_back(acc[rows[d]]);
      if (velocity) velocities.push_back(velocity[rows[d]]);
      kept_grads.push_back(grads[d]);
    }
    adagrad_update(values.data(), sums.data(), velocity ? velocities.data() : nullptr, kept_grads.data(),
                   static_cast<int64_t>(kept.size()), s);
    for (size_t d = 0; d < kept.size(); ++d) {
      weight[kept[d]] = values[d];
      acc[kept[d]] = sums[d];
      if (velocity) velocity[kept[d]] = velocities[d];
    }
    return;
  }
  at::parallel_for(0, n, 8192 / width + 1, [&](int64_t begin, int64_t end) {
    for (int64_t d = begin; d < end; ++d) {
      if (leave_out && leave_out->get(rows[d]) >= 0) continue;
      const int64_t offset = rows[d] * width;
      adagrad_update(weight + offset, acc + offset, velocity ? velocity + offset : nullptr, grads + d * width, width, s);
    }
  });
}

// AdagradMomentum on rows of an item-indexed matrix (adagrad_rows_): position k of ``n`` updates row rows[k] with
// the gradient gradient_of(k) (a pointer to the row's values); a repeated row gets the sum of its gradients, in
// order of position, once. ``slots`` finds repeats.
template <typename GradientOf>
void adagrad_rows(RowParameter& param, const int64_t* rows, int64_t n, GradientOf gradient_of, ItemSlots& slots,
                  const Settings& s) {
  const int64_t width = param.weight.size(1);
  std::vector<int64_t> distinct;  // the distinct rows, in order of first appearance
  std::vector<float> total;       // their summed gradients, row after row
  distinct.reserve(n);
  total.reserve(n * width);
  for (int64_t k = 0; k < n; ++k) {
    const float* __restrict__ source = gradient_of(k);
    const int32_t at = slots.get(rows[k]);
    if (at >= 0) {
      float* __restrict__ target = total.data() + at * width;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) target[j] += source[j];
    } else {
      slots.set(rows[k], static_cast<int32_t>(distinct.size()));
      distinct.push_back(rows[k]);
      total.insert(total.end(), source, source + width);
    }
  }
  slots.clear();
  adagrad_distinct_rows(param, distinct.data(), static_cast<int64_t>(distinct.size()), total.data(), s);
}

// adagrad_rows with position k's gradient in row k of ``row_grads``.
void adagrad_rows(RowParameter& param, const Tensor& rows, const Tensor& row_grads, ItemSlots& slots, const Settings& s) {
  const Tensor grads = row_grads.contiguous();
  const float* g = grads.data_ptr<float>();
  const int64_t width = grads.size(1);
  adagrad_rows(param, rows.data_ptr<int64_t>(), rows.size(0), [g, width](int64_t k) { return g + k * width; }, slots, s);
}

// The column positions that hold each item: for item i, first(i), then next[first(i)], ... until -1. Borrows
// ``slots`` for its lifetime and leaves them clear.
struct ColumnIndex {
  ItemSlots& slots;
  std::vector<int32_t> next;
  ColumnIndex(const int64_t* columns, int64_t width, ItemSlots& item_slots) : slots(item_slots), next(width, -1) {
    for (int64_t j = width - 1; j >= 0; --j) {
      next[j] = slots.get(columns[j]);
      slots.set(columns[j], static_cast<int32_t>(j));
    }
  }
  ~ColumnIndex() { slots.clear(); }
  int32_t first(int64_t item) const { return slots.get(item); }
  int64_t count(int64_t item) const {
    int64_t n = 0;
    for (int32_t j = first(item); j >= 0; j = next[j]) ++n;
    return n;
  }
};

// Each row's negatives among the loss's columns, as weights: how many of the step's scored columns a loss column
// stands for as a negative of the row, 0 where it is none. The loss's columns are the scored columns (weights 1, and
// 0 for the row's target column and, with remove_accidental_hits, every other column holding its item), or, by item,
// the distinct scored items: an item weighs the number of columns that hold it, and the row's target item that
// number less its own column (remove_accidental_hits: 0). A column enters a row's loss only through its score, in
// sums over the columns, so the columns of one item have one gradient and the item's is their sum: taking the loss
// by item needs neither the copy of the scores out to the columns nor the sums of the gradients back.
struct Negatives {
  int64_t width;
  std::vector<int64_t> target;  // each row's target column
  std::vector<float> weights;   // (rows, width)
  std::vector<float> count;     // each row's weights summed: how many of the step's columns are its negatives
  std::vector<char> any;        // whether a row has a negative
  const float* row(int64_t i) const { return weights.data() + i * width; }

  // Per column: ``ids`` tell a row's target from its negatives (the columns' items, or their positions).
  Negatives(const int64_t* ids, const int64_t* target_ids, int64_t rows, int64_t columns, ItemSlots& slots)
      : width(columns), target(rows), weights(rows * columns, 1.0f), count(rows), any(rows) {
    const ColumnIndex index(ids, columns, slots);
    for (int64_t i = 0; i < rows; ++i) {
      target[i] = i;
      int64_t excluded = 0;
      for (int32_t j = index.first(target_ids[i]); j >= 0; j = index.next[j], ++excluded) weights[i * width + j] = 0.0f;
      count[i] = static_cast<float>(width - excluded);
      any[i] = excluded < width;
    }
  }

  // By item: ``item_of`` gives each scored column's item (0 .. n_items - 1); column i holds row i's target.
  Negatives(const std::vector<int32_t>& item_of, int64_t n_items, int64_t rows, bool remove_accidental_hits)
      : width(n_items), target(rows), weights(rows * n_items), count(rows), any(rows) {
    std::vector<float> multiplicity(width, 0.0f);
    for (int32_t d : item_of) multiplicity[d] += 1.0f;
    const int64_t n_columns = static_cast<int64_t>(item_of.size());
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t own = item_of[i];
      target[i] = own;
      std::copy(multiplicity.begin(), multiplicity.end(), weights.begin() + i * width);
      weights[i * width + own] = remove_accidental_hits ? 0.0f : multiplicity[own] - 1.0f;
      count[i] = static_cast<float>(n_columns) - multiplicity[own] + weights[i * width + own];
      any[i] = count[i] > 0;
    }
  }

  // The factor of every row's loss: 1 / divisor, or with divisor 0, 1 / (rows with a negative).
  float scale(int64_t divisor) const {
    const int64_t with_negative = std::count(any.begin(), any.end(), 1);
    return 1.0f / static_cast<float>(divisor > 0 ? divisor : std::max<int64_t>(with_negative, 1));
  }
};

// The Negatives of the scored columns (items ``columns``; row i's target in column i): the columns holding a row's
// target item are not its negatives; without remove_accidental_hits only the row's own column is not.
Negatives column_negatives(const int64_t* columns, const int64_t* targets, int64_t rows, int64_t width,
                           bool remove_accidental_hits, ItemSlots& slots) {
  if (remove_accidental_hits) return Negatives(columns, targets, rows, width, slots);
  std::vector<int64_t> positions(width);
  std::iota(positions.begin(), positions.end(), int64_t{0});
  ItemSlots position_slots(width);
  return Negatives(positions.data(), positions.data(), rows, width, position_slots);
}

// Sampled cross-entropy on linear scores (cross_entropy_with_gradient): each row's softmax over its target column
// and its negatives, each column weighted as Negatives says. Returns (loss, gradient on the scores).
// The rows are independent: they are split between the threads.
std::pair<double, Tensor> cross_entropy(const Tensor& scores, const Negatives& negatives, int64_t divisor) {
  const int64_t rows = scores.size(0), width = scores.size(1), grain = 16;
  constexpr float minus_infinity = -std::numeric_limits<float>::infinity();  // constexpr: a lambda reads it without capturing it
  Tensor probabilities = at::empty_like(scores);
  const float* score = scores.data_ptr<float>();
  float* e = probabilities.data_ptr<float>();
  std::vector<float> row_loss(rows);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* __restrict__ row = score + i * width;
      float* __restrict__ out = e + i * width;
      // A column left out has the target's own score, so the maximum over all columns is the one over the
      // columns kept, up to rounding: it only shifts the exponents. (Written as a comparison: GCC 12 leaves a
      // std::max reduction scalar, ~9x slower here.)
      float maximum = minus_infinity;
#pragma omp simd reduction(max : maximum)
      for (int64_t j = 0; j < width; ++j) maximum = row[j] > maximum ? row[j] : maximum;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) out[j] = row[j] - maximum;
      row_loss[i] = -out[negatives.target[i]];
    }
  });
  probabilities.exp_();  // vectorised, and split between the threads at this size
  const float scale = negatives.scale(divisor);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* __restrict__ out = e + i * width;
      const float* __restrict__ weight = negatives.row(i);
      const int64_t own = negatives.target[i];
      float total = out[own];
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < width; ++j) total += weight[j] * out[j];
      row_loss[i] += std::log(total);  // -log softmax of the target
      const float own_share = out[own] / total, factor = negatives.any[i] ? scale / total : 0.0f;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) out[j] *= weight[j] * factor;
      out[own] += negatives.any[i] ? (own_share - 1) * scale : 0.0f;
    }
  });
  double loss = 0.0;
  for (int64_t i = 0; i < rows; ++i) loss += negatives.any[i] ? static_cast<double>(row_loss[i]) * scale : 0.0;
  return {loss, probabilities};
}

// TOP1 or BPR over the scores (pairwise_with_gradient): the mean over each row's negatives, each column weighted
// as Negatives says, then over the rows that have one. Returns (loss, gradient on the scores).
std::pair<double, Tensor> pairwise(Loss loss_type, const Tensor& scores, const Negatives& negatives, int64_t divisor) {
  const int64_t rows = scores.size(0), width = scores.size(1);
  const float* score = scores.data_ptr<float>();
  Tensor difference = at::empty_like(scores);
  float* d = difference.data_ptr<float>();
  const float scale = negatives.scale(divisor);
  for (int64_t i = 0; i < rows; ++i) {
    const float* __restrict__ row = score + i * width;
    float* __restrict__ out = d + i * width;
    const float own = row[negatives.target[i]];
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) out[j] = row[j] - own;
  }
  Tensor ranking = at::sigmoid(difference);
  const float* rank = ranking.data_ptr<float>();
  Tensor gradient = at::empty_like(scores);
  float* grad = gradient.data_ptr<float>();
  double loss = 0.0;
  Tensor pair_loss = loss_type == TOP1 ? at::sigmoid(scores * scores) : at::softplus(difference);
  const float* per_pair = pair_loss.data_ptr<float>();  // TOP1: the regularizer sigmoid(r_j^2); BPR: -log sigmoid(r_i - r_j)
  for (int64_t i = 0; i < rows; ++i) {
    float row_loss = 0.0f, diagonal = 0.0f;
    const float* __restrict__ negative = negatives.row(i);
    const float row_weight = negatives.any[i] ? scale / negatives.count[i] : 0.0f;
    float* __restrict__ g = grad + i * width;
    const float* __restrict__ r = rank + i * width;
    const float* __restrict__ p = per_pair + i * width;
    const float* __restrict__ x = score + i * width;
    if (loss_type == TOP1) {
#pragma omp simd reduction(+ : row_loss, diagonal)
      for (int64_t j = 0; j < width; ++j) {
        const float weight = negative[j] * row_weight;
        row_loss += (r[j] + p[j]) * weight;
        const float ranking_grad = r[j] * (1 - r[j]) * weight;
        g[j] = p[j] * (1 - p[j]) * x[j] * (2 * weight) + ranking_grad;
        diagonal += ranking_grad;
      }
    } else {
#pragma omp simd reduction(+ : row_loss, diagonal)
      for (int64_t j = 0; j < width; ++j) {
        const float weight = negative[j] * row_weight;
        row_loss += p[j] * weight;
        g[j] = r[j] * weight;
        diagonal += g[j];
      }
    }
    g[negatives.target[i]] -= diagonal;
    loss += row_loss;
  }
  return {loss, gradient};
}

// TOP1-max or BPR-max over the scores (softmax_weighted_with_gradient in losses.py, whose docstring has the
// gradients): each row's pairs weighted by the softmax s over its negatives (each column weighted as Negatives
// says). Three exponent matrices are filled row by row and exponentiated in one vectorised call: the softmax
// numerators exp(r_j - m) (m: the row's largest negative score), exp(-|r_j - r_t|) for the sigmoids of the
// differences, and for BPR-max the numerators of s_j sigmoid(r_t - r_j), exp(min(r_j, r_t) - min(m, r_t)) /
// (1 + exp(-|r_j - r_t|)) up to a row's constant, whose largest is at least 1/2: -log sum_j s_j sigmoid(r_t - r_j)
// stays finite with the target far below its negatives, as losses.py's log-domain form does. For TOP1-max the
// third is exp(-r_j^2), for sigmoid(r_j^2). A column that is no negative gets exponent 0 and weight 0 (ATen's exp
// falls back from its vector path wherever a lane is -inf). The rows are independent: they are split between
// the threads. Returns (loss, gradient on the scores).
std::pair<double, Tensor> softmax_weighted(Loss loss_type, const Tensor& scores, const Negatives& negatives,
                                           double bpreg, int64_t divisor) {
  const int64_t rows = scores.size(0), width = scores.size(1), grain = 16, cells = rows * width;
  constexpr float minus_infinity = -std::numeric_limits<float>::infinity();  // constexpr: a lambda reads it without capturing it
  const bool bpr_max = loss_type == BPR_MAX;
  const float bpreg_value = static_cast<float>(bpreg);
  const float scale = negatives.scale(divisor);
  // A row without negatives is computed over every column as a stand-in and then weighted 0.
  const std::vector<float> stand_in(width, 1.0f);
  auto weights_of = [&](int64_t i) { return negatives.any[i] ? negatives.row(i) : stand_in.data(); };
  const float* score = scores.data_ptr<float>();
  Tensor exponents = at::empty({3, rows, width}, scores.options());
  float* softmax = exponents.data_ptr<float>();
  float* decay = softmax + cells;
  float* third = decay + cells;
  std::vector<float> row_max(rows), row_floor(rows);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* __restrict__ r = score + i * width;
      const float* __restrict__ kept = weights_of(i);
      float* __restrict__ a = softmax + i * width;
      float* __restrict__ b = decay + i * width;
      float* __restrict__ c = third + i * width;
      const float own = r[negatives.target[i]];
      float m = minus_infinity;
#pragma omp simd reduction(max : m)
      for (int64_t j = 0; j < width; ++j) {
        const float value = kept[j] > 0 ? r[j] : minus_infinity;
        m = value > m ? value : m;  // see cross_entropy
      }
      const float lowest = std::min(m, own);
      row_max[i] = m;
      row_floor[i] = lowest;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) {
        a[j] = kept[j] > 0 ? r[j] - m : 0.0f;
        b[j] = -std::abs(r[j] - own);
      }
      if (bpr_max) {
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) c[j] = kept[j] > 0 ? std::min(r[j], own) - lowest : 0.0f;
      } else {
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) c[j] = -r[j] * r[j];
      }
    }
  });
  exponents.exp_();  // vectorised, and split between the threads at this size
  Tensor gradient = at::empty_like(scores);
  float* grad = gradient.data_ptr<float>();
  std::vector<double> row_loss(rows);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* __restrict__ r = score + i * width;
      const float* __restrict__ kept = weights_of(i);
      const float* __restrict__ a = softmax + i * width;
      const float* __restrict__ b = decay + i * width;
      const float* __restrict__ c = third + i * width;
      float* __restrict__ g = grad + i * width;
      // A local copy: GCC 12 leaves a loop that writes through a pointer scalar when it reads a captured
      // variable (which the write might change), as it would with a non-constexpr minus_infinity.
      const float own = r[negatives.target[i]], regularization = bpreg_value;
      float total = 0.0f;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < width; ++j) total += kept[j] * a[j];
      const float inverse = 1.0f / total;
      float target_gradient = 0.0f;
      if (bpr_max) {
        float joint = 0.0f, regularizer = 0.0f;  // sum_j of c_j / (1 + b_j), and of s_j r_j^2
#pragma omp simd reduction(+ : joint, regularizer)
        for (int64_t j = 0; j < width; ++j) {
          joint += kept[j] * c[j] / (1 + b[j]);
          regularizer += kept[j] * a[j] * inverse * r[j] * r[j];
        }
        const float inverse_joint = 1.0f / joint;
#pragma omp simd reduction(+ : target_gradient)
        for (int64_t j = 0; j < width; ++j) {
          const float weight = kept[j] * a[j] * inverse, posterior = kept[j] * c[j] / (1 + b[j]) * inverse_joint;
          const float ranking = (r[j] > own ? b[j] : 1.0f) / (1 + b[j]);  // sigmoid(r_t - r_j)
          g[j] = weight - posterior * ranking + regularization * weight * (r[j] * r[j] - regularizer + 2 * r[j]);
          target_gradient += posterior * (1 - ranking);
        }
        // -log sum_j s_j sigmoid(r_t - r_j), with s_j = a_j / total and the numerators shifted by row_floor - row_max.
        const double log_total = std::log(static_cast<double>(joint)) + row_floor[i] - row_max[i] - std::log(static_cast<double>(total));
        row_loss[i] = regularization * static_cast<double>(regularizer) - log_total;
      } else {
        float per_row = 0.0f;
#pragma omp simd reduction(+ : per_row)
        for (int64_t j = 0; j < width; ++j) {
          const float ranking = (r[j] >= own ? 1.0f : b[j]) / (1 + b[j]);  // sigmoid(r_j - r_t)
          per_row += kept[j] * a[j] * inverse * (ranking + 1 / (1 + c[j]));
        }
#pragma omp simd reduction(+ : target_gradient)
        for (int64_t j = 0; j < width; ++j) {
          const float weight = kept[j] * a[j] * inverse, ranking = (r[j] >= own ? 1.0f : b[j]) / (1 + b[j]);
          const float squashed = 1 / (1 + c[j]), slope = ranking * (1 - ranking);  // sigmoid(r_j^2)
          g[j] = weight * (ranking + squashed - per_row + slope + 2 * r[j] * squashed * (1 - squashed));
          target_gradient += weight * slope;
        }
        row_loss[i] = per_row;
      }
      g[negatives.target[i]] -= target_gradient;
      const float weight = negatives.any[i] ? scale : 0.0f;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) g[j] *= weight;
    }
  });
  double loss = 0.0;
  for (int64_t i = 0; i < rows; ++i) loss += negatives.any[i] ? row_loss[i] * scale : 0.0;
  return {loss, gradient};
}

// scale * ELU_alpha(logits) (ELU: scale 1; SELU), as activations.py. ATen's elu kernel took ~6x its exp's time at a
// step's size here, so min(x, 0) is exponentiated in one vectorised call and the rest is a loop. exp(x) - 1 in
// place of expm1(x) differs from it by at most a float rounding of 1, in absolute terms.
Tensor scaled_elu(const Tensor& logits, const Settings& s) {
  const int64_t n = logits.numel();
  const float scale = static_cast<float>(s.scale), scale_alpha = static_cast<float>(s.scale * s.alpha);
  Tensor scores = at::empty_like(logits);
  const float* __restrict__ x = logits.data_ptr<float>();
  {
    float* __restrict__ out = scores.data_ptr<float>();
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) out[k] = x[k] < 0 ? x[k] : 0.0f;
  }
  scores.exp_();
  float* __restrict__ out = scores.data_ptr<float>();
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) out[k] = x[k] > 0 ? scale * x[k] : scale_alpha * (out[k] - 1);
  return scores;
}

// The loss of a step and its gradient on the pre-activation scores (steps/fused.py: loss_and_gradient), over
// the loss's columns: the scored columns, whose items are ``columns``, or by item (Negatives).
std::pair<double, Tensor> loss_and_gradient(const Tensor& logits, const Negatives& negatives, const Tensor& columns,
                                            const std::optional<Tensor>& log_popularity, const Settings& s) {
  if (s.loss == CROSS_ENTROPY) {  // on linear scores: the gradient on the scores is the one on the logits
    Tensor scores = logits;
    if (s.logq > 0) {  // GRU4RecPaper.scores: log popularity for the mini-batch's targets, times alpha for the rest
      Tensor correction = log_popularity->index_select(0, columns);
      const int64_t in_batch = logits.size(0), width = columns.size(0);
      if (width > in_batch) correction.narrow(0, in_batch, width - in_batch).mul_(s.sample_alpha);
      scores = logits - s.logq * correction;
    }
    return cross_entropy(scores.contiguous(), negatives, s.loss_divisor);
  }
  Tensor scores = logits;
  if (s.activation == TANH) scores = at::tanh(logits);
  else if (s.activation == RELU) scores = at::relu(logits);
  else if (s.activation == LEAKY) scores = at::leaky_relu(logits, s.alpha);
  else if (s.activation == ELU || s.activation == SELU) scores = scaled_elu(logits, s);
  auto [loss, gradient] = s.loss == TOP1 || s.loss == BPR
      ? pairwise(s.loss, scores.contiguous(), negatives, s.loss_divisor)
      : softmax_weighted(s.loss, scores.contiguous(), negatives, s.bpreg, s.loss_divisor);
  float* __restrict__ grad = gradient.data_ptr<float>();
  const float* __restrict__ score = scores.data_ptr<float>();
  const float* __restrict__ logit = logits.data_ptr<float>();
  const int64_t n = gradient.numel();
  if (s.activation == TANH) {  // times the activation's slope
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) grad[k] *= 1 - score[k] * score[k];
  } else if (s.activation != LINEAR) {  // activations.slope: piecewise on the sign of the logit
    const float alpha = static_cast<float>(s.alpha), scale = static_cast<float>(s.scale);
    const bool relu = s.activation == RELU, leaky = s.activation == LEAKY;
    // Below zero: 0 (relu), the slope (leaky), or score + scale * alpha (ELU, SELU); as one expression, so that
    // the loop has no branch and vectorises.
    const float with_score = relu || leaky ? 0.0f : 1.0f, constant = relu ? 0.0f : leaky ? alpha : scale * alpha;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) grad[k] *= logit[k] > 0 ? scale : with_score * score[k] + constant;
  }
  return {loss, gradient};
}

// A (rows, width) tensor of the rows ``rows`` of ``table``, times ``scale[k]`` when ``scale`` is given.
Tensor gather_rows(const Tensor& table, const int64_t* rows, int64_t n, const float* scale = nullptr) {
  const int64_t width = table.size(1);
  Tensor out = at::empty({n, width}, table.options());
  const float* __restrict__ source = table.data_ptr<float>();
  float* __restrict__ target = out.data_ptr<float>();
  for (int64_t k = 0; k < n; ++k) {
    const float* __restrict__ row = source + rows[k] * width;
    if (scale) {
      for (int64_t j = 0; j < width; ++j) target[k * width + j] = row[j] * scale[k];
    } else {
      std::copy_n(row, width, target + k * width);
    }
  }
  return out;
}

struct LayerCache {
  Tensor hidden, reset_update, candidate, hidden_gates;  // hidden_gates: PyTorch's variant only
  Tensor reset_hidden;  // r * h: the paper's form only
};

// The new state (1 - z) n + z h into ``state``, torch.lerp's two-sided formula, as gru_cell.gru_forward.
void mix_state(const Tensor& reset_update, const Tensor& candidate, const Tensor& hidden, Tensor& state) {
  const int64_t rows = hidden.size(0), size = hidden.size(1);
  const float* ru = reset_update.data_ptr<float>();
  const float* n = candidate.data_ptr<float>();
  const float* h = hidden.data_ptr<float>();
  float* __restrict__ out = state.data_ptr<float>();
  for (int64_t b = 0; b < rows; ++b) {
#pragma omp simd
    for (int64_t j = 0; j < size; ++j) {
      const int64_t k = b * size + j;
      const float update = ru[b * 2 * size + size + j], difference = h[k] - n[k];
      out[k] = std::abs(update) < 0.5f ? n[k] + update * difference : h[k] - difference * (1 - update);
    }
  }
}

// One GRU step in the paper's form (gru_cell.gru_forward with reset_before): n = tanh(W_n x + U_n (r * h) + b_n).
LayerCache gru_forward_paper(const Tensor& input_gates, const Tensor& hidden, const Tensor& weight, const Tensor& bias,
                             Tensor state) {
  const int64_t size = hidden.size(1);
  Tensor reset_update = at::addmm(bias.narrow(0, 0, 2 * size), hidden, weight.narrow(0, 0, 2 * size).t());
  reset_update.add_(input_gates.narrow(1, 0, 2 * size)).sigmoid_();
  Tensor reset_hidden = reset_update.narrow(1, 0, size) * hidden;
  Tensor candidate = at::addmm(bias.narrow(0, 2 * size, size), reset_hidden, weight.narrow(0, 2 * size, size).t());
  candidate.add_(input_gates.narrow(1, 2 * size, size)).tanh_();
  mix_state(reset_update, candidate, hidden, state);
  return {hidden, reset_update, candidate, Tensor(), reset_hidden};
}

// One GRU step (gru_cell.gru_forward) from the input gates W_i x + b_i (B, 3H): writes the new state into
// ``state`` (B, H) and returns what the backward needs.
LayerCache gru_forward(const Tensor& input_gates, const Tensor& hidden, const Tensor& weight, const Tensor& bias,
                       Tensor state, bool reset_before) {
  if (reset_before) return gru_forward_paper(input_gates, hidden, weight, bias, state);
  const int64_t rows = hidden.size(0), size = hidden.size(1);
  Tensor hidden_gates = at::addmm(bias, hidden, weight.t());
  Tensor reset_update = at::empty({rows, 2 * size}, hidden.options());
  Tensor candidate = at::empty({rows, size}, hidden.options());
  // Each loop in a block of its own: a restrict pointer must not live across the in-place sigmoid_ / tanh_.
  const float* gi = input_gates.data_ptr<float>();
  const float* hg = hidden_gates.data_ptr<float>();
  {
    float* __restrict__ ru = reset_update.data_ptr<float>();
    for (int64_t b = 0; b < rows; ++b) {
#pragma omp simd
      for (int64_t j = 0; j < 2 * size; ++j) ru[b * 2 * size + j] = gi[b * 3 * size + j] + hg[b * 3 * size + j];
    }
  }
  reset_update.sigmoid_();
  const float* ru = reset_update.data_ptr<float>();
  {
    float* __restrict__ n = candidate.data_ptr<float>();
    for (int64_t b = 0; b < rows; ++b) {
#pragma omp simd
      for (int64_t j = 0; j < size; ++j) {
        n[b * size + j] = gi[b * 3 * size + 2 * size + j] + ru[b * 2 * size + j] * hg[b * 3 * size + 2 * size + j];
      }
    }
  }
  candidate.tanh_();
  mix_state(reset_update, candidate, hidden, state);
  return {hidden, reset_update, candidate, hidden_gates, Tensor()};
}

struct GateGradients {
  Tensor input_gates, hidden_gates;  // (B, 3H) each
  Tensor input_gates_sum, hidden_gates_sum;  // their sums over the rows: the bias gradients
};

// The paper's form of gru_backward (gru_cell.gru_backward with reset_before, without the hidden-state gradient):
// the reset gate's gradient goes back through U_n onto r * h. The gate gradients of both sides are the same.
// Loops over the (B, 3H) gate gradients around one matrix product.
GateGradients gru_backward_paper(const Tensor& grad_state, const LayerCache& cache, const Tensor& weight) {
  const int64_t rows = cache.hidden.size(0), size = cache.hidden.size(1);
  const auto options = cache.hidden.options();
  Tensor gates = at::empty({rows, 3 * size}, options), sums = at::zeros({3 * size}, options);
  const float* __restrict__ g = grad_state.data_ptr<float>();
  const float* __restrict__ h = cache.hidden.data_ptr<float>();
  const float* __restrict__ ru = cache.reset_update.data_ptr<float>();
  const float* __restrict__ n = cache.candidate.data_ptr<float>();
  float* gate = gates.data_ptr<float>();
  for (int64_t b = 0; b < rows; ++b) {  // the update and candidate blocks: through the mix and the tanh
    float* __restrict__ out = gate + b * 3 * size;
#pragma omp simd
    for (int64_t j = 0; j < size; ++j) {
      const int64_t k = b * size + j;
      const float update = ru[b * 2 * size + size + j];
      out[size + j] = g[k] * (h[k] - n[k]) * update * (1 - update);
      out[2 * size + j] = g[k] * (1 - update) * (1 - n[k] * n[k]);
    }
  }
  Tensor through_candidate = at::mm(gates.narrow(1, 2 * size, size), weight.narrow(0, 2 * size, size));  // onto r * h
  const float* __restrict__ onto_reset_hidden = through_candidate.data_ptr<float>();
  float* __restrict__ total = sums.data_ptr<float>();
  for (int64_t b = 0; b < rows; ++b) {  // the reset block, through the sigmoid; then the bias gradients
    float* __restrict__ out = gate + b * 3 * size;
#pragma omp simd
    for (int64_t j = 0; j < size; ++j) {
      const int64_t k = b * size + j;
      const float reset = ru[b * 2 * size + j];
      out[j] = onto_reset_hidden[k] * h[k] * reset * (1 - reset);
    }
#pragma omp simd
    for (int64_t c = 0; c < 3 * size; ++c) total[c] += out[c];
  }
  return {gates, gates, sums, sums};
}

// W_hh's gradient from the gate gradients: every block reads h, but the paper's candidate block reads r * h.
Tensor hidden_weight_grad(const GateGradients& grads, const LayerCache& cache) {
  if (!cache.reset_hidden.defined()) return at::mm(grads.hidden_gates.t(), cache.hidden);
  const int64_t size = cache.hidden.size(1);
  Tensor out = at::empty({3 * size, size}, cache.hidden.options());
  Tensor gate_rows = out.narrow(0, 0, 2 * size), candidate_rows = out.narrow(0, 2 * size, size);
  at::mm_out(gate_rows, grads.hidden_gates.narrow(1, 0, 2 * size).t(), cache.hidden);
  at::mm_out(candidate_rows, grads.hidden_gates.narrow(1, 2 * size, size).t(), cache.reset_hidden);
  return out;
}

// One GRU step's backward (gru_cell.gru_backward without the hidden-state gradient), from the gradient on the
// new state (B, H).
GateGradients gru_backward(const Tensor& grad_state, const LayerCache& cache, const Tensor& weight) {
  if (cache.reset_hidden.defined()) return gru_backward_paper(grad_state, cache, weight);
  const int64_t rows = cache.hidden.size(0), size = cache.hidden.size(1);
  const auto options = cache.hidden.options();
  GateGradients out{at::empty({rows, 3 * size}, options), at::empty({rows, 3 * size}, options),
                    at::zeros({3 * size}, options), at::zeros({3 * size}, options)};
  const float* __restrict__ g = grad_state.data_ptr<float>();
  const float* __restrict__ h = cache.hidden.data_ptr<float>();
  const float* __restrict__ ru = cache.reset_update.data_ptr<float>();
  const float* __restrict__ n = cache.candidate.data_ptr<float>();
  const float* __restrict__ hg = cache.hidden_gates.data_ptr<float>();  // its last H columns are the hidden candidate
  float* __restrict__ gi = out.input_gates.data_ptr<float>();
  float* __restrict__ gh = out.hidden_gates.data_ptr<float>();
  for (int64_t b = 0; b < rows; ++b) {
#pragma omp simd
    for (int64_t j = 0; j < size; ++j) {
      const int64_t k = b * size + j, gate = b * 3 * size + j;
      const float reset = ru[b * 2 * size + j], update = ru[b * 2 * size + size + j];
      const float grad_candidate = g[k] * (1 - update) * (1 - n[k] * n[k]);
      const float grad_reset = grad_candidate * hg[gate + 2 * size] * reset * (1 - reset);
      const float grad_update = g[k] * (h[k] - n[k]) * update * (1 - update);
      gi[gate] = gh[gate] = grad_reset;
      gi[gate + size] = gh[gate + size] = grad_update;
      gi[gate + 2 * size] = grad_candidate;
      gh[gate + 2 * size] = grad_candidate * reset;
    }
  }
  float* __restrict__ gi_sum = out.input_gates_sum.data_ptr<float>();
  float* __restrict__ gh_sum = out.hidden_gates_sum.data_ptr<float>();
  for (int64_t b = 0; b < rows; ++b) {
#pragma omp simd
    for (int64_t c = 0; c < 3 * size; ++c) {
      gi_sum[c] += gi[b * 3 * size + c];
      gh_sum[c] += gh[b * 3 * size + c];
    }
  }
  return out;
}

Tensor dropout_mask(int64_t rows, int64_t columns, double p, const at::TensorOptions& options) {
  return at::rand({rows, columns}, options).ge_(p).mul_(1.0 / (1.0 - p));  // as gru4rec_paper.dropout_mask
}

// The item maps of a chunk of steps: one for the loss's column index and one for each half of the update, which
// run side by side.
struct Workspace {
  ItemSlots scored, columns, output_half, rest_half;
  explicit Workspace(int64_t n_items) : scored(n_items), columns(n_items), output_half(n_items), rest_half(n_items) {}
};

// The distinct items of a step's scored columns. The three products with the columns' output weights are linear in
// each column, so where many columns repeat an item the step takes them once per item (by_item), and the loss too,
// each item weighted by its columns (Negatives); with logQ, whose correction differs between a batch column and a
// sampled copy of its item, the scores of an item are copied out to every column holding it and the gradients of
// those columns summed before the backward products. With 2048 negatives drawn by popularity (sample_alpha 0.5)
// about half of ml-100k's 2112 columns repeat an item; with 512 a fifth do, and the products by item gained nothing,
// so below a third the products stay per column and only the output layer's row gradients are summed per item
// (rows_to_items).
struct ScoredItems {
  std::vector<int64_t> items;                     // in order of first column
  std::vector<int32_t> of;                        // each column's position in items
  std::vector<int32_t> first;                     // each item's first column
  std::vector<int32_t> repeat_column, repeat_of;  // the other columns, in order, with their item's position
  bool by_item;
  ScoredItems(const int64_t* columns, int64_t width, ItemSlots& slots) : of(width) {
    for (int64_t j = 0; j < width; ++j) {
      int32_t at = slots.get(columns[j]);
      if (at < 0) {
        at = static_cast<int32_t>(items.size());
        slots.set(columns[j], at);
        items.push_back(columns[j]);
        first.push_back(static_cast<int32_t>(j));
      } else {
        repeat_column.push_back(static_cast<int32_t>(j));
        repeat_of.push_back(at);
      }
      of[j] = at;
    }
    slots.clear();
    by_item = 3 * static_cast<int64_t>(repeat_column.size()) >= width && !repeat_column.empty();
  }
  int64_t count() const { return static_cast<int64_t>(items.size()); }
  // The rows of the output weights the products take: one per item, or one per column.
  const int64_t* product_rows(const int64_t* columns) const { return by_item ? items.data() : columns; }
  int64_t product_count() const { return by_item ? count() : static_cast<int64_t>(of.size()); }

  // (rows, width) scores of the columns from the (rows, product_count) scores of the products.
  Tensor to_columns(const Tensor& product_scores) const {
    if (!by_item) return product_scores;
    const int64_t rows = product_scores.size(0), width = static_cast<int64_t>(of.size()), n = count();
    Tensor out = at::empty({rows, width}, product_scores.options());
    const float* in = product_scores.data_ptr<float>();
    float* target = out.data_ptr<float>();
    const int32_t* __restrict__ position = of.data();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float* __restrict__ source = in + i * n;
        float* __restrict__ row = target + i * width;
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) row[j] = source[position[j]];
      }
    });
    return out;
  }

  // (rows, product_count) gradients of the products from the (rows, width) gradients of the columns: by item, each
  // item's columns summed in column order (its first column, then its repeats; a scatter-add over all columns
  // took ~1.6x as long).
  Tensor to_products(const Tensor& column_grads) const {
    if (!by_item) return column_grads;
    const int64_t rows = column_grads.size(0), width = static_cast<int64_t>(of.size()), n = count();
    const int64_t n_repeats = static_cast<int64_t>(repeat_column.size());
    Tensor out = at::empty({rows, n}, column_grads.options());
    const float* in = column_grads.data_ptr<float>();
    float* target = out.data_ptr<float>();
    const int32_t* __restrict__ first_column = first.data();
    const int32_t* __restrict__ column = repeat_column.data();
    const int32_t* __restrict__ position = repeat_of.data();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float* __restrict__ source = in + i * width;
        float* __restrict__ row = target + i * n;
#pragma omp simd
        for (int64_t d = 0; d < n; ++d) row[d] = source[first_column[d]];
        for (int64_t r = 0; r < n_repeats; ++r) row[position[r]] += source[column[r]];
      }
    });
    return out;
  }

  // (count, k) rows of the items from the (product_count, k) rows of the products: per column, each item's rows
  // summed in column order.
  Tensor rows_to_items(const Tensor& rows_of_products) const {
    if (by_item || repeat_column.empty()) return rows_of_products;
    const int64_t k = rows_of_products.size(1), n = count();
    Tensor out = at::empty({n, k}, rows_of_products.options());
    const float* in = rows_of_products.data_ptr<float>();
    float* target = out.data_ptr<float>();
    for (int64_t d = 0; d < n; ++d) std::copy_n(in + first[d] * k, k, target + d * k);
    for (size_t r = 0; r < repeat_column.size(); ++r) {
      const float* __restrict__ source = in + repeat_column[r] * k;
      float* __restrict__ row = target + repeat_of[r] * k;
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) row[j] += source[j];
    }
    return out;
  }
};

// One session-parallel step: forward, loss, backward and update, as FusedTrainingStep._arithmetic.
// ``hidden`` (L, B, H) is the carried state; returns the step's loss and the new state (L, B, H).
std::pair<double, Tensor> train_step(const Parameters& params, std::vector<Tensor>& dense, std::vector<Tensor>& sums,
                                     std::vector<Tensor>& velocities, RowParameter& input_rows,
                                     RowParameter& output_rows, RowParameter& bias_rows, const Tensor& items,
                                     const Tensor& targets,
                                     const Tensor& columns, const Tensor& hidden,
                                     const std::optional<Tensor>& log_popularity, Workspace& workspace,
                                     const Settings& s) {
  START_LAPS();
  const int64_t layers = s.num_layers, rows = items.size(0), size = hidden.size(2), width = columns.size(0);
  const auto options = hidden.options();
  const bool one_hot = s.input == ONE_HOT;
  // The random draws first, in the fused step's order: input dropout (one value per row for the 1-of-N input,
  // whose gathered row it scales; one per embedding dimension otherwise), then each layer's.
  Tensor input_mask = s.dropout_input > 0
      ? dropout_mask(rows, one_hot ? 1 : input_rows.weight.size(1), s.dropout_input, options) : Tensor();
  std::vector<Tensor> hidden_masks(layers);
  for (auto& mask : hidden_masks) {
    if (s.dropout_hidden > 0) mask = dropout_mask(rows, size, s.dropout_hidden, options);
  }
  LAP_TIMER(DROPOUT_MASKS);

  // Forward, keeping what the backward needs: the recurrent part and the gather of the scored items share
  // nothing, so with two or more intra-op threads they run side by side (as the backward's halves, below).
  const int64_t* item = items.data_ptr<int64_t>();
  const int64_t* column = columns.data_ptr<int64_t>();
  Tensor embedded, head, new_hidden = at::empty({layers, rows, size}, options);
  std::vector<LayerCache> caches;
  std::vector<Tensor> outputs;
  auto recurrent = [&] {
    SCOPE_TIMER(GRU_FORWARD);
    Tensor gates;
    if (one_hot) {
      gates = gather_rows(input_rows.weight, item, rows, input_mask.defined() ? input_mask.data_ptr<float>() : nullptr);
      gates += params.input_bias();
    } else {
      embedded = gather_rows(input_rows.weight, item, rows);
      if (input_mask.defined()) embedded.mul_(input_mask);
      gates = at::addmm(params.input_bias(), embedded, params.input_weight().t());
    }
    for (int64_t layer = 0; layer < layers; ++layer) {
      caches.push_back(gru_forward(gates, hidden[layer], params.hidden_weight(layer), params.hidden_bias(layer),
                                   new_hidden[layer], s.reset_before));
      // The dropped output is also the state carried to the next step, as in the author's code.
      if (hidden_masks[layer].defined()) new_hidden[layer].mul_(hidden_masks[layer]);
      outputs.push_back(new_hidden[layer]);
      if (layer + 1 < layers) gates = at::addmm(params.upper_bias(layer), outputs.back(), params.upper_weight(layer).t());
    }
    head = outputs.back();
    if (s.feedforward) head = at::tanh(at::addmm(params.feedforward_bias(), head, params.feedforward_weight().t()));
  };
  Tensor column_weights, column_bias;  // the output layer's rows the products take (ScoredItems)
  std::optional<ScoredItems> scored;
  auto scored_columns = [&] {
    SCOPE_TIMER(SCORED_GATHER);
    scored.emplace(column, width, workspace.scored);
    const int64_t* product_row = scored->product_rows(column);
    column_weights = gather_rows(output_rows.weight, product_row, scored->product_count());
    column_bias = gather_rows(bias_rows.weight, product_row, scored->product_count()).view({-1});
  };
  at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    for (int64_t half = begin; half < end; ++half) half == 0 ? recurrent() : scored_columns();
  });
  LAP_TIMER(FORWARD);
  // With products by item the loss is taken by item too, but for logQ, which corrects a batch column and a
  // sampled copy of its item differently.
  const bool loss_by_item = scored->by_item && s.logq == 0;
  Tensor products = at::addmm(column_bias, head, column_weights.t());
  Tensor logits = loss_by_item ? products : scored->to_columns(products);
  LAP_TIMER(SCORES);

  const Negatives negatives = loss_by_item
      ? Negatives(scored->of, scored->count(), rows, s.remove_accidental_hits)
      : column_negatives(column, targets.data_ptr<int64_t>(), rows, width, s.remove_accidental_hits, workspace.columns);
  auto [loss, grad_logits] = loss_and_gradient(logits, negatives, columns, log_popularity, s);
  LAP_TIMER(LOSS);
  const Tensor grad_products = loss_by_item ? grad_logits : scored->to_products(grad_logits);
  LAP_TIMER(PER_ITEM_SUMS);
  const int64_t n_products = grad_products.size(1), n_scored = scored->count();
  const int64_t* scored_item = scored->items.data();

  // Backward and update, in two halves that share nothing they write: the output layer (its weight rows and bias
  // at the scored items), and the rest, top to bottom. The rest reads the output weights only through
  // column_weights (and a shared embedding through embedded), copied before any update. With two or more intra-op
  // threads the halves run side by side: at this size a matrix product gains little from a second thread, two
  // products at once nearly twice. grads follows dense's order. A shared embedding's row gets one update from the
  // gradients of both its uses: the items only scored are updated in the output half; the input rows (marked in
  // rest_half, which the rest does not use then) after both halves, with the gradients of their scores if scored.
  const bool shared = s.input == SHARED_EMBEDDING;
  std::vector<Tensor> grads(dense.size());
  Tensor item_grads, input_grads;  // item_grads: the output weights' rows at the scored items
  auto update = [&](size_t i) {
    adagrad_dense(dense[i], grads[i], sums[i], velocities.empty() ? nullptr : &velocities[i], s);
  };
  if (shared) {
    for (int64_t k = 0; k < rows; ++k) workspace.rest_half.set(item[k], 0);
  }
  auto output_layer = [&] {
    SCOPE_TIMER(OUTPUT_HALF);
    START_LAPS();
    item_grads = scored->rows_to_items(at::mm(grad_products.t(), head));
    LAP_TIMER(OUTPUT_PRODUCT);
    adagrad_distinct_rows(output_rows, scored_item, n_scored, item_grads.data_ptr<float>(), s,
                          shared ? &workspace.rest_half : nullptr);
    Tensor bias_grads = at::zeros({n_products, 1}, options);  // the column sums (ATen's sum(0) took ~4x as long)
    const float* grad = grad_products.data_ptr<float>();
    for (int64_t i = 0; i < rows; ++i) {
      const float* __restrict__ source = grad + i * n_products;
      float* __restrict__ target = bias_grads.data_ptr<float>();
#pragma omp simd
      for (int64_t j = 0; j < n_products; ++j) target[j] += source[j];
    }
    adagrad_distinct_rows(bias_rows, scored_item, n_scored, scored->rows_to_items(bias_grads).data_ptr<float>(), s);
    LAP_TIMER(OUTPUT_UPDATES);
  };
  auto rest = [&] {
    SCOPE_TIMER(REST_HALF);
    START_LAPS();
    Tensor grad_output = at::mm(grad_products, column_weights);
    LAP_TIMER(REST_PRODUCT);
    if (s.feedforward) {
      Tensor grad_pre = grad_output * (1 - head * head);
      grads[params.feedforward_weight_at()] = at::mm(grad_pre.t(), outputs.back());
      grads[params.feedforward_weight_at() + 1] = grad_pre.sum(0);
      grad_output = at::mm(grad_pre, params.feedforward_weight());
    }
    GateGradients gate_grads;
    for (int64_t layer = layers - 1; layer >= 0; --layer) {
      Tensor grad_state = hidden_masks[layer].defined() ? grad_output * hidden_masks[layer] : grad_output.contiguous();
      gate_grads = gru_backward(grad_state, caches[layer], params.hidden_weight(layer));
      grads[params.hidden_weight_at(layer)] = hidden_weight_grad(gate_grads, caches[layer]);
      grads[params.hidden_weight_at(layer) + 1] = gate_grads.hidden_gates_sum;
      if (layer > 0) {
        grads[params.upper_weight_at(layer - 1)] = at::mm(gate_grads.input_gates.t(), outputs[layer - 1]);
        grads[params.upper_weight_at(layer - 1) + 1] = gate_grads.input_gates_sum;
        grad_output = at::mm(gate_grads.input_gates, params.upper_weight(layer - 1));
      }
    }
    grads[params.input_bias_at()] = gate_grads.input_gates_sum;
    input_grads = gate_grads.input_gates;
    if (!one_hot) {
      grads[Parameters::input_weight_at] = at::mm(input_grads.t(), embedded);
      input_grads = at::mm(input_grads, params.input_weight());
    }
    if (input_mask.defined()) input_grads = input_grads * input_mask;
    LAP_TIMER(GRU_BACKWARD);
    for (size_t i = 0; i < dense.size(); ++i) update(i);
    if (!shared) adagrad_rows(input_rows, items, input_grads, workspace.rest_half, s);
    LAP_TIMER(DENSE_UPDATES);
  };
  at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    for (int64_t half = begin; half < end; ++half) half == 0 ? output_layer() : rest();
  });
  LAP_TIMER(BACKWARD);
  if (shared) {  // the input rows, with the gradients of their inputs and, if scored, of their columns
    const Tensor input_grad_rows = input_grads.contiguous();
    const int64_t embedding = input_grad_rows.size(1);
    std::vector<int64_t> updated(item, item + rows);
    std::vector<const float*> gradients;
    for (int64_t k = 0; k < rows; ++k) gradients.push_back(input_grad_rows.data_ptr<float>() + k * embedding);
    for (int64_t d = 0; d < n_scored; ++d) {
      if (workspace.rest_half.get(scored_item[d]) < 0) continue;
      updated.push_back(scored_item[d]);
      gradients.push_back(item_grads.data_ptr<float>() + d * embedding);
    }
    workspace.rest_half.clear();
    adagrad_rows(output_rows, updated.data(), static_cast<int64_t>(updated.size()),
                 [&gradients](int64_t k) { return gradients[k]; }, workspace.output_half, s);
  }
  LAP_TIMER(SHARED_ROWS);
  return {loss, new_hidden};
}

// The state a step starts from (steps/state.py: SessionState.carried): the previous step's state of each row's slot, times carry
// (0 where the slot's session starts); zero when there is no previous state.
Tensor carried_hidden(const Tensor& state, const int64_t* previous_rows, const float* carry, int64_t rows,
                      int64_t layers, int64_t size, const at::TensorOptions& options) {
  if (!state.defined()) return at::zeros({layers, rows, size}, options);
  Tensor out = at::empty({layers, rows, size}, options);
  const int64_t previous_width = state.size(1);
  const float* __restrict__ source = state.data_ptr<float>();
  float* __restrict__ target = out.data_ptr<float>();
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t b = 0; b < rows; ++b) {
      const float* __restrict__ from = source + (l * previous_width + previous_rows[b]) * size;
      float* __restrict__ to = target + (l * rows + b) * size;
      for (int64_t j = 0; j < size; ++j) to[j] = from[j] * carry[b];
    }
  }
  return out;
}

// Sets the intra-op threads to one for its lifetime when ``one_thread``, then restores them: a step whose score
// product is small loses more to waiting for the second thread than it gains from it (steps/cpp.py: SPLIT_WORK).
struct SingleThreaded {
  const int64_t threads;
  const bool active;
  explicit SingleThreaded(bool one_thread) : threads(at::get_num_threads()), active(one_thread && threads > 1) {
    if (active) at::set_num_threads(1);
  }
  ~SingleThreaded() {
    if (active) at::set_num_threads(threads);
  }
};

// Trains the steps of one chunk: step t has the events bounds[t]:bounds[t + 1] of items, targets and carry (1: the
// slot's session goes on; 0: it starts here), and previous_rows maps each event to its slot's row in step t - 1.
// ``hidden`` is the state after the step before the chunk (None at the start of an epoch), ``negatives`` the
// extra negatives of each step (steps, n_sample). A chunk whose first step's score product has fewer than
// ``split_work`` multiply-adds runs on one thread. Stops after the first step with a non-finite loss.
// Returns (the loss of each step trained, the hidden states after the last one).
std::tuple<Tensor, Tensor> train_steps(std::vector<Tensor> dense, std::vector<Tensor> sums,
                                       std::vector<Tensor> velocities, std::vector<Tensor> input_rows,
                                       std::vector<Tensor> output_rows, std::vector<Tensor> bias_rows,
                                       int64_t input_kind, int64_t num_layers, bool feedforward,
                                       bool reset_before,
                                       int64_t loss, bool remove_accidental_hits, int64_t loss_divisor, double bpreg,
                                       int64_t activation, double alpha, double scale, double logq,
                                       double sample_alpha, std::optional<Tensor> log_popularity, double dropout_input,
                                       double dropout_hidden, double lr, double momentum, double eps, Tensor items,
                                       Tensor targets, Tensor carry, Tensor previous_rows, std::vector<int64_t> bounds,
                                       std::optional<Tensor> negatives, std::optional<Tensor> hidden,
                                       int64_t split_work) {
  c10::NoGradGuard no_grad;
  const Settings settings{static_cast<Input>(input_kind), num_layers, feedforward, reset_before, static_cast<Loss>(loss), remove_accidental_hits, loss_divisor, bpreg,
                          static_cast<Activation>(activation),
                          alpha, scale, logq, sample_alpha, dropout_input, dropout_hidden, static_cast<float>(lr),
                          static_cast<float>(momentum), static_cast<float>(eps)};
  const Parameters params{dense, num_layers, input_kind != ONE_HOT};
  RowParameter input(input_rows), output(output_rows), bias(bias_rows);
  Workspace workspace(output.weight.size(0));
  const int64_t steps = static_cast<int64_t>(bounds.size()) - 1;
  const int64_t size = params.hidden_weight(0).size(1);  // W_hh is (3H, H)
  const int64_t first_rows = steps > 0 ? bounds[1] - bounds[0] : 0;
  const int64_t first_width = first_rows + (negatives.has_value() ? negatives->size(1) : 0);
  SingleThreaded small_steps(first_rows * first_width * size < split_work);
  std::vector<double> losses;
  Tensor state = hidden.has_value() ? *hidden : Tensor();
  const int64_t* previous = previous_rows.data_ptr<int64_t>();
  const float* carried = carry.data_ptr<float>();
  for (int64_t t = 0; t < steps; ++t) {
    START_LAPS();
    const int64_t start = bounds[t], rows = bounds[t + 1] - bounds[t];
    Tensor step_items = items.narrow(0, start, rows), step_targets = targets.narrow(0, start, rows);
    Tensor step_hidden = carried_hidden(state, previous + start, carried + start, rows, num_layers, size, dense[0].options());
    Tensor columns = negatives.has_value() ? at::cat({step_targets, (*negatives)[t]}) : step_targets;
    LAP_TIMER(CARRIED_STATE);
    auto [step_loss, new_state] = train_step(params, dense, sums, velocities, input, output, bias, step_items, step_targets,
                                             columns, step_hidden, log_popularity, workspace, settings);
    LAP_TIMER(STEP);
    losses.push_back(step_loss);
    state = new_state;
    if (!std::isfinite(step_loss)) break;
  }
  Tensor loss_values = at::empty({static_cast<int64_t>(losses.size())}, at::kDouble);
  std::copy(losses.begin(), losses.end(), loss_values.data_ptr<double>());
  return {loss_values, state};
}

// torch.searchsorted(cumulative, uniform, right=True): for each u in ``uniform`` (float64 in [0, 1)) the number of
// entries of ``cumulative`` (non-decreasing float64) that are <= u, which is how sampling.py draws items. A guide
// table (Chen & Asau 1974) narrows each search to the entries between u's two bucket edges, b / K and (b + 1) / K
// (K a power of two, so u K and b / K are exact): the same answers as a binary search over the whole table, at a
// few ns a draw instead of ~60 for torch's kernel here.
Tensor inverse_cdf(const Tensor& cumulative, const Tensor& uniform) {
  TORCH_CHECK(cumulative.scalar_type() == at::kDouble && uniform.scalar_type() == at::kDouble,
              "inverse_cdf takes float64 tensors, not ", cumulative.scalar_type(), " and ", uniform.scalar_type());
  const Tensor table = cumulative.contiguous(), draws = uniform.contiguous();
  const int64_t n = table.numel(), count = draws.numel();
  int64_t buckets = 1;
  while (buckets < 2 * n) buckets *= 2;
  const double* c = table.data_ptr<double>();
  std::vector<int64_t> guide(buckets + 1);  // guide[b]: the number of entries <= b / K
  for (int64_t b = 0, i = 0; b <= buckets; ++b) {
    const double edge = static_cast<double>(b) / static_cast<double>(buckets);
    while (i < n && c[i] <= edge) ++i;
    guide[b] = i;
  }
  guide[0] = 0, guide[buckets] = n;  // so that a u below 0 or from 1 on is answered too
  Tensor found = at::empty({count}, at::kLong);
  const double* u = draws.data_ptr<double>();
  int64_t* out = found.data_ptr<int64_t>();
  at::parallel_for(0, count, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const double position = std::floor(u[k] * static_cast<double>(buckets));
      const int64_t b = position < 0 ? 0 : position >= buckets ? buckets - 1 : static_cast<int64_t>(position);
      out[k] = std::upper_bound(c + guide[b], c + guide[b + 1], u[k]) - c;
    }
  });
  return found.view(uniform.sizes());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "GRU4RecPaper's fused training step in C++, a chunk of session-parallel steps per call";
  module.def("train_steps", &train_steps, "Train a chunk of session-parallel steps in place; see steps/cpp.py");
  module.def("inverse_cdf", &inverse_cdf, "torch.searchsorted(cumulative, uniform, right=True) for float64 draws");
#ifdef STEP_TIMERS
  module.def("timers", &timers, "(part, seconds summed over calls) of each timed part of the step");
#endif
}
