"""A CheckpointHook whose saves survive a kill at any moment.

mmengine 0.10's ``CheckpointHook`` deletes the oldest kept checkpoint before
writing the new one in place and then rewrites ``last_checkpoint`` in place:
a kill during the save (``max_keep_ckpts=1``) leaves no complete checkpoint,
or an empty ``last_checkpoint``, and nothing to ``--resume`` from. Here the
new checkpoint is written under a temporary name and renamed into place,
``last_checkpoint`` is replaced the same way, and only then are old
checkpoints deleted. Non-local backends keep mmengine's behaviour.
"""

import glob
import os
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

PARTIAL_SUFFIX = '.partial'


def replace_text_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old or the new file."""
    tmp = path + PARTIAL_SUFFIX
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) that never leaves a work dir
    without a complete checkpoint that ``last_checkpoint`` names."""

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and self._is_local():
            for leftover in glob.glob(osp.join(self.out_dir, f'*{PARTIAL_SUFFIX}')):
                runner.logger.info(f'removing {leftover}, left by an interrupted save')
                os.remove(leftover)

    def _is_local(self) -> bool:
        return isinstance(self.file_backend, LocalBackend)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        if not self._is_local():
            return super()._save_checkpoint_with_step(runner, step, meta)
        stale = []
        # keep_ckpt_ids exists only with max_keep_ckpts > 0; a step saved twice
        # (latest and best in one epoch) is counted once.
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename + PARTIAL_SUFFIX,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():
            return
        os.replace(self.last_ckpt + PARTIAL_SUFFIX, self.last_ckpt)
        replace_text_atomically(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old_step in stale:
            old = osp.join(self.out_dir, self.filename_tmpl.format(old_step))
            if osp.isfile(old):
                os.remove(old)


def use_atomic_checkpoint_hook(cfg) -> None:
    """Swap the config's stock ``CheckpointHook`` for :class:`AtomicCheckpointHook`
    (the project's tools do this for every config)."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if hook is not None and hook.get('type') in ('CheckpointHook', CheckpointHook):
        hook['type'] = 'AtomicCheckpointHook'
