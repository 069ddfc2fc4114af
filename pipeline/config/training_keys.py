"""How one fold trains: the model, augmentation, sampling, training and loss sections."""

from typing import Literal

from pydantic import Field

from pipeline.config.base import MONITOR_MAXIMISE, Float, Section

__all__ = ["ModelConfig", "AugmentConfig", "SamplingConfig", "TrainConfig", "LossConfig"]


class ModelConfig(Section):
    name: str = "resnet10t"
    pretrained: bool = False
    pretrained_file: str | None = None
    drop_rate: Float = 0.0
    heads: Literal["single", "mask"] = "single"   # mask: one backbone, heads mask 3 x gender 2 x age 3
    freeze_backbone: bool = False      # train only the classifier head (feature extraction)
    unfreeze_epoch: int | None = None  # then fine-tune everything from this epoch on


class AugmentConfig(Section):
    image_size: int = Field(32, ge=8)      # pixels
    pre_resize_crop: list | None = None   # [h, w] centre crop before the resize (train and eval)
    train: list = [{"HorizontalFlip": {"p": 0.5}}]   # pydantic copies mutable defaults per instance
    mean: list = [0.485, 0.456, 0.406]
    std: list = [0.229, 0.224, 0.225]
    # Random flips of whole batches on the device (one tensor op instead of one call per image);
    # use in place of HorizontalFlip/VerticalFlip in `train`. Applied after `train`'s steps.
    device_hflip: Float = Field(0.0, ge=0, le=1)
    device_vflip: Float = Field(0.0, ge=0, le=1)

    def _rules(self):
        crop = self.pre_resize_crop
        return [("pre_resize_crop", crop is None or (len(crop) == 2 and all(isinstance(v, int) and v >= 8
                                                                            for v in crop)),
                 "must be [height, width] in pixels, each at least 8"),
                ("mean", len(self.mean) == 3, "must list 3 channel means"),
                ("std", len(self.std) == 3 and all(s > 0 for s in self.std),
                 "must list 3 positive channel standard deviations")]


class SamplingConfig(Section):
    method: Literal["none", "balanced", "oversample"] = "none"
    target_ratio: Float = Field(0.5, gt=0, le=1)


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: Float = Field(1e-3, gt=0)
    weight_decay: Float = Field(1e-4, ge=0)
    optimizer: Literal["sgd", "momentum", "adam", "adamw", "nadam", "radam", "rmsprop", "lamb", "lion"] = "adamw"
    momentum: Float = 0.9
    scheduler: Literal["none", "step", "cosine", "plateau", "onecycle"] = "cosine"
    step_size: int = Field(3, ge=1)
    gamma: Float = 0.1
    warmup_epochs: int = Field(0, ge=0)   # and below `epochs`
    plateau_patience: int = 2
    backbone_lr: Float | None = Field(None, gt=0)   # lower rate for the pretrained backbone; the head uses `lr`
    accumulate: int = Field(1, ge=1)      # gradient accumulation: updates of an N-times larger batch
    grad_clip: Float | None = Field(None, gt=0)     # max gradient norm
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 where the CPU/GPU has it, else off; fp16: CUDA
    channels_last: bool | Literal["auto"] = "auto"      # auto: on CUDA and on a CPU with oneDNN
    compile: bool = False              # torch.compile the model
    mixup_alpha: Float = Field(0.0, ge=0)
    cutmix_alpha: Float = Field(0.0, ge=0)
    mix_prob: Float = Field(1.0, ge=0, le=1)
    mix_off_epoch: int | None = None   # switch Mixup/CutMix off from this epoch on
    ema: bool = False                  # validate and save an exponential moving average of the weights
    ema_decay: Float = Field(0.998, gt=0, lt=1)
    patience: int | None = Field(None, ge=1)   # early stopping: epochs without improvement of `monitor`
    monitor: Literal[tuple(MONITOR_MAXIMISE)] | None = None   # None: competition.metric
    num_workers: int | str = "auto"    # auto: 0 on CPU, one per spare core (up to 8) on a GPU
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def _rules(self):
        w = self.num_workers
        return [("num_workers", w == "auto" or (isinstance(w, int) and w >= 0),
                 "must be 'auto' or a non-negative integer"),
                ("warmup_epochs", self.warmup_epochs < self.epochs, "must be in [0, train.epochs)"),
                ("batch_size", not (self.mixup_alpha or self.cutmix_alpha) or self.batch_size % 2 == 0,
                 "must be even when Mixup/CutMix is on (they pair images within a batch)")]


class LossConfig(Section):
    name: Literal["ce", "focal", "f1", "weighted_ce"] = "ce"
    mix: dict | None = None            # e.g. {ce: 0.7, f1: 0.3}; overrides `name`
    label_smoothing: Float = Field(0.0, ge=0, lt=1)
    focal_gamma: Float = Field(2.0, ge=0)
    focal_alpha: list | None = None    # per-class alpha for focal loss
    class_weights: str | list | None = None   # "balanced" (from class frequencies) or a list
