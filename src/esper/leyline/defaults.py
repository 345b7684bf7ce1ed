"""Every default constant of Esper, defined once; other modules import, never redefine them."""

from __future__ import annotations

# --- Gates -----------------------------------------------------------------------------------
#: G2: the seed's incubation gain (the host's training loss minus the loss with the seed blended
#: at alpha 1, mean over its last TRAINING epoch, in the loss's units) must exceed this. Measured
#: while the host cannot adapt to the seed, so dependency cannot inflate it.
DEFAULT_G2_MIN_INCUBATION_GAIN = 0.0
#: G5: the same frozen measurement must exceed this to fossilize (a seed pushed past G2 by hand
#: or by a lenient G2 still has to have added something before the host adapted).
DEFAULT_G5_MIN_INCUBATION_GAIN = 0.0
#: G2: epochs a seed must incubate before it may blend.
DEFAULT_G2_MIN_TRAINING_EPOCHS = 3
#: G2: parameter-normalized seed/host gradient ratio below which the seed is not learning.
DEFAULT_G2_MIN_GRADIENT_RATIO = 0.05
#: G2: real seed-to-host leaks tolerated. Detection is exact, so any leak is one too many.
DEFAULT_MAX_ISOLATION_VIOLATIONS = 0
#: G3: epochs a seed must spend blending before probation.
DEFAULT_G3_MIN_BLENDING_EPOCHS = 3
#: G3: alpha the ramp must have reached before probation.
DEFAULT_G3_MIN_ALPHA = 0.95
#: G5: counterfactual contribution (accuracy points) required to fossilize.
DEFAULT_G5_MIN_CONTRIBUTION = 1.0
#: G5: validation accuracy may fall at most this many points below its value when the seed
#: entered BLENDING (the last epoch the host ran without it).
DEFAULT_G5_MAX_ACCURACY_DROP = 0.5
#: The same two G5 thresholds for a task measured in loss (``GateConfig.for_loss``): a seed
#: must lower the validation loss by this much (nats for cross-entropy)...
DEFAULT_G5_MIN_CONTRIBUTION_LOSS = 0.005
#: ...and the validation loss may rise at most this much since the seed entered BLENDING.
DEFAULT_G5_MAX_LOSS_RISE = 0.01
#: Units a quality can be measured in: accuracy points (higher is better) or loss, reported as
#: its negative so that, here too, a positive contribution helps.
QUALITY_UNITS = ("points", "loss")

# --- Lifecycle -------------------------------------------------------------------------------
#: Epochs the alpha ramp takes from 0 to exactly 1 (one ramp step per ``step_epoch``).
DEFAULT_BLENDING_STEPS = 5
#: Epochs a seed may stay in PROBATIONARY without being fossilized before it is culled.
DEFAULT_PROBATION_EPOCHS = 5
#: Epochs a slot stays EMBARGOED after a cull before it may be reset and germinate again.
DEFAULT_EMBARGO_EPOCHS = 5
#: Default alpha schedule for BLENDING.
DEFAULT_BLEND_ALGORITHM = "linear"
#: Steepness of the ``sigmoid`` alpha schedule.
DEFAULT_SIGMOID_STEEPNESS = 10.0

# --- Telemetry -------------------------------------------------------------------------------
#: EMA decay for the gradient ratio (weight kept on the previous value).
DEFAULT_GRADIENT_EMA_DECAY = 0.9
#: Training steps between gradient-telemetry captures.
DEFAULT_GRADIENT_TELEMETRY_STRIDE = 10

# --- Incubation ------------------------------------------------------------------------------
#: Training steps between shadow passes (1: every step). The shadow pass runs the network from
#: an incubating seed's slot to the head again, which for a seed near the input is most of a
#: step; the other steps train the host alone and the seed waits, with no gradient. A capture
#: step of gradient telemetry always has its shadow pass, so the seed's gradient is measured.
DEFAULT_SHADOW_EVERY = 1
#: How a new seed's output layer starts: ``zero`` (the seed begins as the identity and must
#: learn its way up) or ``computed`` (solved from the slot's recent inputs and loss gradients,
#: so that the seed lowers the loss from its first step; see ``esper.kasmina.computed_init``).
SEED_INITS = ("zero", "computed")
DEFAULT_SEED_INIT = "zero"
#: A computed seed's output starts at this fraction of its slot's feature RMS. Measured with
#: benchmarks/seed_init.py (fashion and pystd hosts after 3 epochs, every blueprint with an
#: output layer at every slot, 8 batches the fit never saw): at 0.05 the loss fell for 10 of 12
#: CNN seeds (mean -0.0100) and 5 of 6 transformer seeds (-0.0095), more than at 0.01 or 0.02.
DEFAULT_INIT_SCALE = 0.05
#: What a slot keeps for a computed initialisation: the first rows of every Nth training batch
#: of the current epoch, the most recent ones (the trainer starts each epoch with none, so a
#: run resumed at an epoch boundary solves the same seeds). With 8 batches of 16 rows the fit
#: did not carry over to fresh batches (at scale 0.05 the CNN seeds' loss rose for 8 of 12);
#: 16 batches of 64 rows did. Every 2nd step keeps the copy off half the steps.
DEFAULT_INIT_MEMORY_BATCHES = 16
DEFAULT_INIT_MEMORY_ROWS = 64
DEFAULT_INIT_MEMORY_EVERY = 2
#: Version of the telemetry event schema written to events.jsonl.
TELEMETRY_SCHEMA_VERSION = 1

# --- Governor --------------------------------------------------------------------------------
#: Loss history length the governor compares against.
DEFAULT_GOVERNOR_HISTORY = 20
#: A loss above mean + this many standard deviations of recent history is a spike.
DEFAULT_GOVERNOR_SENSITIVITY = 6.0
#: ...and it must also exceed recent mean by this factor (guards against a flat history).
DEFAULT_GOVERNOR_MIN_SPIKE_FACTOR = 3.0
#: Losses needed before spike detection starts (NaN/Inf are always caught).
DEFAULT_GOVERNOR_MIN_HISTORY = 5

# --- Heuristic controller (Tamiyo) -----------------------------------------------------------
#: No germination before this epoch.
DEFAULT_MIN_EPOCHS_BEFORE_GERMINATION = 5
#: Epochs with gain below the plateau threshold before the host counts as plateaued.
DEFAULT_PLATEAU_EPOCHS = 3
#: Accuracy gain (points) below which an epoch counts as plateau.
DEFAULT_PLATEAU_THRESHOLD = 0.5
#: When the heuristic grows (``HeuristicConfig.timing``, ``--timing``). ``relative`` became the
#: default in 0.3.0: on pystd it turned growth from no gain (test loss 1.4844 vs the static
#: host's 1.4850) into 1.4408, and on pyref it reached 1.3878 against 1.4037 on the plateau rule.
DEFAULT_TIMING = "relative"
#: ``--timing relative``: grow once the last 3 epochs lowered the validation loss by less than
#: this share of all it has fallen since the first epoch (the learning curve has flattened
#: relative to itself, however slowly it still falls).
DEFAULT_RELATIVE_GROWTH_SHARE = 0.15
#: Epochs over which ``recent_loss_share`` measures the recent fall.
DEFAULT_RECENT_LOSS_EPOCHS = 3
#: A seed this many epochs in one stage...
DEFAULT_CULL_AFTER_EPOCHS = 5
#: ...that lost more than this many points is culled.
DEFAULT_CULL_IF_ACCURACY_DROPS = 2.0
#: The same for a task measured in loss: culled once the validation loss rose this much.
DEFAULT_CULL_IF_LOSS_RISES = 0.04
#: A seed still incubating after this many epochs (G2 never passed) is culled to free its slot.
DEFAULT_CULL_STALLED_AFTER_EPOCHS = 10
#: Stop germinating once this many seeds in a row were culled, trying one seed at a time (0:
#: never stop, and the next seed may grow while the last one blends). 2 gave the test results
#: of 0 on digits, fashion, pyref and pystd for up to 16% less training compute
#: (docs/performance.md, "Growth patience 2"); one cull can be bad luck, two in a row rarely are.
DEFAULT_GROWTH_PATIENCE = 2
#: Penalty added to a blueprint's score each time one of its seeds is culled.
DEFAULT_BLUEPRINT_CULL_PENALTY = 1.0
#: Host counts as stabilized once its per-epoch loss change is below this fraction.
DEFAULT_STABILIZATION_THRESHOLD = 0.03

# --- Training --------------------------------------------------------------------------------
#: Host learning rate when a task does not set one.
DEFAULT_LEARNING_RATE = 0.01
#: Seed learning rate when a task does not set one.
DEFAULT_SEED_LEARNING_RATE = 0.01
#: Training batch size when a task does not set one.
DEFAULT_BATCH_SIZE = 64
#: Batch size for validation and counterfactual passes (no gradients, so larger is cheaper).
DEFAULT_EVAL_BATCH_SIZE = 512
#: SGD momentum.
DEFAULT_MOMENTUM = 0.9
#: SGD weight decay.
DEFAULT_WEIGHT_DECAY = 5e-4
#: AdamW weight decay (decoupled, so a larger value than SGD's L2 term).
DEFAULT_ADAMW_WEIGHT_DECAY = 0.01
#: The cosine schedule decays every learning rate to this fraction of its base.
DEFAULT_LR_FLOOR = 0.05
#: Learning-rate schedules the trainer knows.
LR_SCHEDULES = ("cosine", "constant")
#: Intra-op threads for a run. Measured on the 2-core machine: the default digits run took
#: 5.2 s with 1 thread and 37 s with 2 while one other process was busy; and the thread count
#: changes a CNN's floating-point sums, so fixing it makes a seed's result the same everywhere.
DEFAULT_THREADS = 1
#: The live view redraws at most this often. A redraw renders for about 4.5 ms under the GIL,
#: so on a run emitting events faster than this it costs up to rate x 4.5 ms a second: at 4 a
#: second a default digits run took 3% longer than without the view, at 2 about 1.7%.
DEFAULT_LIVE_REFRESH_PER_SECOND = 2.0
#: Epochs between full-state checkpoints (``checkpoint.pt``) of a run.
DEFAULT_CHECKPOINT_EVERY = 1

# --- Learned controller (Simic) ---------------------------------------------------------------
#: Reward charged per parameter added to the host, in quality units (accuracy points, or
#: centinats for a language model). Widening the host from x1 to x1.25 bought about 2.5e-4 units
#: per parameter on fashion (+0.83 test points for 3,366 parameters) and on pyref (-0.0443 test
#: loss for 17,736 parameters). Half that rate asks a seed to be at least half as
#: parameter-efficient as building the host wider: a seed of 10,000 parameters must add 1.25.
DEFAULT_PARAMETER_RENT = 1.25e-4
#: Policy training draws its runs' seeds from 0..N-1; evaluation uses seeds from 1000 on.
DEFAULT_TRAIN_SEEDS = 64
