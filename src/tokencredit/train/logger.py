"""Metrics to JSONL (always), TensorBoard and W&B (when asked for and installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Append-only metrics log. On resume, lines of steps after the checkpoint are dropped first, so a resumed
    run's file equals an uninterrupted run's."""

    def __init__(self, out: Path, *, tensorboard: bool, wandb: bool, project: str, config: dict[str, Any],
                 resume_step: int | None = None, filename: str = "metrics.jsonl") -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / filename
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line and self._step(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        self.wandb = None
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as err:
                raise ValueError("log.wandb: W&B logging asked for but wandb is not installed "
                                 "(pip install 'tokencredit[wandb]')") from err
            self.wandb = wandb_module.init(project=project, config=config, dir=str(out), resume="allow")

    @staticmethod
    def _step(line: str) -> int:
        record = json.loads(line)
        return record.get("global_step", record.get("step", 0))

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("global_step", record.get("step", 0))
        for key, value in record.items():
            if self.tb is not None and isinstance(value, (int, float)) and key not in ("step", "global_step"):
                self.tb.add_scalar(f"{record.get('phase', 'train')}/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log(record, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
