"""Every setting: a dataclass field with its default and its one-line meaning (the `help`
metadata that `python -m gan_dist.train --help` lists), the allowed choices and ranges, and
the keys a checkpoint must match. The defaults ARE the default run (conditional WGAN-GP on
scikit-learn's digits), so the installed package runs without the repo's configs/ folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


def setting(default: Any, help: str) -> Any:
    """A field with its meaning; lists get a fresh copy per Config."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    dir: str = setting("runs/digits_cwgan_gp", "the run directory: checkpoints, samples, metrics; "
                       "a run started on one that has checkpoints resumes; on several nodes, one directory on shared storage")
    shared_fs_wait_s: float = setting(30.0, "seconds a rank waits to see what rank 0 wrote in run.dir (lock, "
                                      "checkpoint) before deciding it is not shared (NFS caches lag)")


@dataclass
class DistConfig:
    backend: str = setting("auto", "auto (nccl on CUDA, gloo on CPU) | nccl | gloo (lets ranks share one GPU)")
    force_ddp: bool = setting(False, "join a process group and wrap both networks in DDP even on one rank: the "
                              "multi-GPU path (nccl, SyncBatchNorm, device_ids) on one GPU, for checks: torchrun --nproc_per_node=1 "
                              "-m gan_dist.train dist.force_ddp=true; the training line says 'DDP over nccl, "
                              "SyncBatchNorm'")


@dataclass
class DataConfig:
    name: str = setting("digits", "digits | fashion_mnist | mnist | image_folder | zip | package.module:factory")
    root: str = setting("", "the dataset's folder (zip: the .zip file; fashion_mnist, mnist: the folder holding "
                       "FashionMNIST/raw or MNIST/raw, the train IDX files suffice; digits ship inside scikit-learn)")
    image_size: int = setting(16, "images are resized (and center-cropped) to this square size; DCGAN: a power "
                              "of two >= 8 (zip: unset takes the zip's)")
    channels: int = setting(1, "image_folder, zip: 1 (grayscale) or 3 (RGB) (zip: unset takes the zip's)")
    download: bool = setting(False, "fashion_mnist, mnist: download into data.root (off: clusters often have no "
                              "internet); rank 0 downloads, the others wait, then one rank per other node")
    num_workers: str = setting("auto", "DataLoader worker processes per rank (persistent; pinned memory on CUDA; "
                               "they ignore stop signals); auto: 0 for data in memory and on the CPU, for a folder "
                               "or zip on CUDA the rank's CPUs but one, at most 8")
    decode: str = setting("cpu", "zip of JPEGs: cpu (in the loader's workers) | device (whole batches with "
                          "torchvision.io.decode_jpeg on the training device: nvjpeg on CUDA)")
    start_method: str = setting("", "the workers' start method: '' (platform default) | fork | forkserver | spawn")
    on_device: bool = setting(False, "keep the whole (small) dataset on the device: no loader at all")


@dataclass
class ModelConfig:
    kind: str = setting("dcgan", "dcgan | mlp | r3gan (R3GAN's residual network, no normalization) | "
                        "package.module:factory (your own pair)")
    conditional: bool = setting(True, "labels as one-hot channels (critic) and concatenated to z (generator)")
    z_dim: int = setting(64, "noise dimensions")
    width: int = setting(32, "DCGAN base channel count; r3gan: every stage 2 x width wide unless model.widths")
    widths: list[int] = setting([], "r3gan: the width of each stage, 4x4 first (as many as stages: 4x4 to "
                                "data.image_size); empty: 2 x model.width")
    groups: list[int] = setting([], "r3gan: the grouped 3x3's groups per stage; empty: 16 expanded channels a group")
    blocks: list[int] = setting([], "r3gan: residual blocks per stage; empty: 2 each")
    hidden: list[int] = setting([1024, 512, 256], "MLP critic widths; the generator takes them reversed")
    norm: str = setting("batch", "generator normalization: batch (SyncBatchNorm across CUDA ranks) | none")
    critic_norm: str = setting("instance", "DCGAN critic normalization: instance | none (never batch: the "
                               "penalty is per sample)")
    spectral_norm: bool = setting(False, "spectral normalization of every conv/linear layer of the built-in critics")
    dropout: float = setting(0.3, "MLP critic dropout")


@dataclass
class LossConfig:
    kind: str = setting("wgan_gp", "wgan_gp | bce | hinge | ns_r1 | rpgan (R3GAN's relativistic pairing loss "
                        "with R1 + R2; its recipe trains 1:1: loss.n_critic=1)")
    gp_lambda: float = setting(10.0, "WGAN-GP's gradient-penalty weight lambda")
    r1_gamma: Optional[float] = setting(None, "ns_r1: R1's gamma (gamma/2 |grad D(real)|^2), null: 10; rpgan: "
                                        "the gamma of gamma/2 (R1 + R2), null: 0.05 (R3GAN's CIFAR-10 value). Before 0.3 "
                                        "loss.gp_lambda was R1's gamma too: a config that sets it with ns_r1 and no "
                                        "r1_gamma keeps that meaning, with a deprecation line")
    n_critic: int = setting(3, "critic updates per generator update (the WGAN-GP paper's 5 trains worse per "
                            "second here: docs, Watching a run)")
    reuse_batch: bool = setting(False, "the book's loop: one real batch for all n_critic updates (default: a "
                                       "fresh batch each, as the WGAN-GP paper)")
    gp_every: int = setting(1, "lazy regularization: the penalty (GP, R1, R1 + R2) every k critic updates, "
                            "weighted by k")
    r1_gamma_end: Optional[float] = setting(None, "ns_r1, rpgan: gamma at the end of optim.schedule (cosine); "
                                            "null: gamma stays constant")


@dataclass
class AugmentConfig:
    kind: str = setting("none", "none | diffaug (DiffAugment: the policy on every critic input, each operation with "
                        "probability augment.p) | ada (adaptive: p tuned from the critic's overfitting); docs, "
                        "Augmentation")
    policy: str = setting("", "operations, comma-separated: translation, scale, rotation, cutout, brightness, "
                          "contrast, saturation, xflip, color (= brightness, saturation, contrast); empty: diffaug "
                          "color,translation,cutout, ada translation,scale,rotation,color")
    p: Optional[float] = setting(None, "diffaug: each operation's probability (null: 1); ada: the starting p (null: "
                                 "0; a resumed run keeps its saved p)")
    target: float = setting(0.6, "ada: the overfitting statistic r_t that p holds the critic at")
    interval: int = setting(4, "ada: steps between two adjustments of p")
    speed_kimg: float = setting(500.0, "ada: thousands of real images the critic sees for p to go 0 -> 1")


@dataclass
class NetworkOptimConfig:
    lr: Optional[float] = setting(None, "this network's learning rate; null: optim.lr (TTUR, SAGAN's: "
                                  "optim.generator.lr=1e-4 optim.critic.lr=4e-4)")
    lr_end: Optional[float] = setting(None, "this network's learning rate at the end of optim.schedule; null: "
                                      "optim.lr_end")
    betas: Optional[list[float]] = setting(None, "this network's Adam betas; null: optim.betas")
    eps: Optional[float] = setting(None, "this network's Adam eps; null: optim.eps")


@dataclass
class OptimConfig:
    lr: float = setting(2e-4, "Adam's learning rate of both networks (a resumed run takes the config's; the "
                       "WGAN-GP paper's 1e-4 with n_critic 5 is the chapter-5 config)")
    betas: list[float] = setting([0.0, 0.9], "Adam's betas (the WGAN-GP paper's)")
    eps: float = setting(1e-8, "Adam's eps; larger values damp updates of near-zero gradients")
    schedule: str = setting("constant", "constant | cosine: lr (and loss.r1_gamma, Adam's beta2 where their _end "
                            "is set) from the start value at step 0 to the _end value at optim.schedule_steps, "
                            "v(k) = end + (start - end) (1 + cos(pi min(k, T) / T)) / 2")
    schedule_steps: int = setting(0, "T, the schedule's length in generator steps; 0: train.steps at the run's "
                                  "first start, kept by resumes (so extending train.steps does not rewrite the past)")
    lr_end: float = setting(0.0, "the learning rate at the end of a cosine schedule (both networks; per network: "
                            "optim.generator.lr_end, optim.critic.lr_end)")
    beta2_end: Optional[float] = setting(None, "Adam's beta2 at the end of a cosine schedule (R3GAN: 0.9 -> 0.99); "
                                         "null: beta2 stays constant")
    generator: NetworkOptimConfig = field(default_factory=NetworkOptimConfig)  # TTUR: the two at their own rates
    critic: NetworkOptimConfig = field(default_factory=NetworkOptimConfig)

    def of(self, network: str) -> dict:
        """Adam's settings of one network ("generator" | "critic"): its own, else the shared ones."""
        own = getattr(self, network)
        return {"lr": self.lr if own.lr is None else own.lr, "betas": tuple(self.betas if own.betas is None else own.betas),
                "eps": self.eps if own.eps is None else own.eps}

    def lr_end_of(self, network: str) -> float:
        own = getattr(self, network).lr_end
        return self.lr_end if own is None else own


@dataclass
class TrainConfig:
    steps: int = setting(3000, "generator steps to train to")
    max_time_s: float = setting(0.0, "a wall-clock budget: the run finishes at the first step after this many seconds "
                                "of training (summed over resumes; start-up not counted), saved and evaluated as at "
                                "train.steps, every rank at the same step; 0: none (Lightning's max_time)")
    batch_size: int = setting(64, "the GLOBAL batch, split evenly across ranks")
    micro_batch: str = setting("0", "images per rank per forward (gradient accumulation over batch_size / (W x "
                               "micro_batch) micro-batches); 0: batch_size / W at the first start, then kept by "
                               "resumes; auto: the largest that fits the GPU (CPU: batch_size / W); docs, Fewer GPUs than planned")
    threads: Optional[int] = setting(None, "torch threads per rank; null: OMP_NUM_THREADS outside torchrun, else "
                                     "the CPUs available / ranks on the node; on a machine shared with other busy processes "
                                     "set it lower, e.g. 1: OpenMP threads that outnumber the free cores spin and stall")
    log_every: int = setting(50, "steps between metric lines (one all-reduce each)")
    sample_every: int = setting(250, "steps between sample grids")
    checkpoint_every: int = setting(500, "steps between checkpoints")
    keep_checkpoints: int = setting(3, "keep the last K step checkpoints")
    ema_decay: float = setting(0.995, "generator EMA decay (with a (1+t)/(10+t) warm-up); 0: off (unless "
                               "train.ema_kimg is set)")
    ema_kimg: float = setting(0.0, "the generator EMA's half-life in thousands of images (StyleGAN's ema_kimg): "
                              "decay 0.5 ** (batch_size / (1000 ema_kimg)) per step, the same for any world size "
                              "and accumulation; 0: train.ema_decay")
    ema_rampup: Optional[float] = setting(None, "with train.ema_kimg: the half-life at most this fraction of the "
                                          "images seen so far (StyleGAN's ema_rampup, e.g. 0.05); null: none")
    precision: str = setting("fp32", "fp32 | bf16 (autocast; the penalty's norm stays fp32)")
    channels_last: bool = setting(False, "DCGAN convolutions in NHWC (faster on tensor cores): the weights, the real "
                                "images from the loader and the critic's input with its label channels")
    tf32: bool = setting(True, "CUDA: TF32 matmuls and convolutions")
    cudnn_benchmark: bool = setting(True, "CUDA: cuDNN picks the fastest kernels for the fixed shapes")
    deterministic: bool = setting(False, "CUDA: deterministic kernels only (cuDNN's, torch.use_deterministic_algorithms("
                                  "warn_only=True), cuBLAS's workspace setting; cudnn_benchmark off): two runs, and a run and its resume, bitwise equal; slower")
    compile: bool = setting(False, "torch.compile the generator, and a critic whose loss needs no double backward "
                           "(bce, hinge): aot_autograd does not support the penalties' double backward (torch 2.14)")
    keep_best: str = setting("", "keep checkpoints/best.pt by this eval metric: fid | kid | precision | recall | "
                           "cond_acc | fid_class_mean | fid_class_max")
    on_divergence: str = setting("stop", "stop | rollback (to the last checkpoint, learning rates scaled)")
    rollback_lr_factor: float = setting(0.5, "learning rates after each rollback: times this")
    max_rollbacks: int = setting(3, "rollbacks before the run stops")
    divergence_factor: float = setting(0.0, "a critic |Wasserstein| or gradient norm above this x its running "
                                       "median diverges; 0: only non-finite losses")


@dataclass
class EvalConfig:
    every: int = setting(500, "steps between quality evaluations; 0: never (the default digits features on "
                         "other data: off, with a warning)")
    num_samples: int = setting(1000, "generated images per evaluation, split across ranks (at most the real "
                              "held-out half: both sides are scored at the same n; at least 4)")
    features: str = setting("digits", "digits[:PATH] | fid_inception[:PATH] | inception:PATH | torchscript:PATH")
    real: str = setting("", "a held-out real set to score against: a data.root for data.name's reader that "
                        "training never reads ((Fashion-)MNIST: its t10k test files where present); "
                        "empty: two halves of the training data")
    use_ema: bool = setting(True, "sample grids and evaluation from the EMA generator")
    kid_subsets: int = setting(10, "KID: the mean and std over this many random subsets ...")
    kid_subset_size: int = setting(1000, "... of this many samples (fewer if a set is smaller)")


@dataclass
class WandbConfig:
    mode: str = setting("disabled", "disabled | offline | online (rank 0 only)")
    project: str = setting("gan_dist", "wandb project")
    entity: str = setting("", "wandb entity (team or user)")
    name: str = setting("", "the run's name on the dashboard")
    group: str = setting("", "wandb group")
    tags: list[str] = setting([], "wandb tags")


@dataclass
class Config:
    seed: int = setting(0, "every random draw derives from it (weights, noise, data order)")
    run: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


CHOICES = {
    "dist.backend": ("auto", "nccl", "gloo"),
    "data.start_method": ("", "fork", "forkserver", "spawn"),
    "data.decode": ("cpu", "device"),
    "model.norm": ("batch", "none"),
    "model.critic_norm": ("instance", "none"),
    "loss.kind": ("wgan_gp", "bce", "hinge", "ns_r1", "rpgan"),
    "optim.schedule": ("constant", "cosine"),
    "augment.kind": ("none", "diffaug", "ada"),
    "train.precision": ("fp32", "bf16"),
    "train.on_divergence": ("stop", "rollback"),
    "wandb.mode": ("disabled", "offline", "online"),
}

# str keys that take a number or a word: what their one-line errors say they take
WORDS = {"train.micro_batch": "0 (batch_size / world size), a positive number of images or auto",
         "data.num_workers": "a number of workers >= 0 or auto"}

# augment.policy's operations (gan_dist.training.augment applies them), DiffAugment's alias, and
# each kind's policy when augment.policy is empty.
AUGMENT_OPERATIONS = ("translation", "scale", "rotation", "cutout", "brightness", "contrast", "saturation", "xflip")
AUGMENT_ALIASES = {"color": ("brightness", "saturation", "contrast")}
AUGMENT_POLICY = {"diffaug": "color,translation,cutout",  # DiffAugment's recommendation
                  "ada": "translation,scale,rotation,color"}  # stylegan2-ada's "bgc" without its flips

# The quality metrics and which way is better (train.keep_best); the class-wise ones need a
# conditional model. The vocabulary of a setting lives here; gan_dist.quality computes them.
METRIC_DIRECTION = {"fid": "min", "kid": "min", "precision": "max", "recall": "max", "cond_acc": "max",
                    "fid_class_mean": "min", "fid_class_max": "min"}
NEEDS_CLASSES = ("cond_acc", "fid_class_mean", "fid_class_max")

# Settings that change the shape of a model or of the data it learns: a checkpoint written
# under other values cannot be resumed (checked by checkpoint.check_compatible).
ARCHITECTURE_KEYS = (
    "data.name", "data.image_size", "data.channels", "model.kind", "model.conditional",
    "model.z_dim", "model.width", "model.hidden", "model.norm", "model.critic_norm", "model.spectral_norm",
    "model.widths", "model.groups", "model.blocks",
)

SEED_MAX = 2**63 - 1  # torch generators take 64-bit seeds; the sampler adds the epoch to it

# key: (low, high, low inclusive, high inclusive); None: unbounded. Every float is also finite.
RANGES = {
    "seed": (0, SEED_MAX, True, True),
    "run.shared_fs_wait_s": (0, None, True, True),
    "data.image_size": (1, None, True, True),
    "model.z_dim": (1, None, True, True),
    "model.width": (1, None, True, True),
    "model.dropout": (0.0, 1.0, True, False),
    "loss.gp_lambda": (0.0, None, True, True),
    "loss.r1_gamma": (0.0, None, True, True),
    "loss.r1_gamma_end": (0.0, None, True, True),
    "optim.schedule_steps": (0, None, True, True),
    "optim.lr_end": (0.0, 1.0, True, True),
    "optim.generator.lr_end": (0.0, 1.0, True, True),
    "optim.critic.lr_end": (0.0, 1.0, True, True),
    "optim.beta2_end": (0.0, 1.0, True, False),
    "train.ema_kimg": (0.0, None, True, True),
    "train.ema_rampup": (0.0, None, False, True),
    "loss.n_critic": (1, None, True, True),
    "loss.gp_every": (1, None, True, True),
    "optim.lr": (0.0, 1.0, False, True),
    "optim.eps": (0.0, 1.0, False, False),
    "optim.generator.lr": (0.0, 1.0, False, True),
    "optim.generator.eps": (0.0, 1.0, False, False),
    "optim.critic.lr": (0.0, 1.0, False, True),
    "optim.critic.eps": (0.0, 1.0, False, False),
    "augment.p": (0.0, 1.0, True, True),
    "augment.target": (0.0, 1.0, False, False),
    "augment.interval": (1, None, True, True),
    "augment.speed_kimg": (0.0, None, False, True),
    "train.steps": (0, None, True, True),
    "train.max_time_s": (0.0, None, True, True),
    "train.batch_size": (1, None, True, True),
    "train.threads": (1, None, True, True),
    "train.log_every": (1, None, True, True),
    "train.sample_every": (1, None, True, True),
    "train.checkpoint_every": (1, None, True, True),
    "train.keep_checkpoints": (1, None, True, True),
    "train.ema_decay": (0.0, 1.0, True, False),
    "train.rollback_lr_factor": (0.0, 1.0, False, True),
    "train.max_rollbacks": (0, None, True, True),
    "train.divergence_factor": (0.0, None, True, True),
    "eval.every": (0, None, True, True),
    "eval.num_samples": (4, None, True, True),  # > precision/recall's k = 3
    "eval.kid_subsets": (1, None, True, True),
    "eval.kid_subset_size": (2, None, True, True),
}
