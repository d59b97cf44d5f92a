"""A CheckpointHook whose saves survive a kill at any moment.

mmengine 0.10's ``CheckpointHook`` deletes the oldest kept checkpoint before
writing the new one in place and then rewrites ``last_checkpoint`` in place:
a kill during the save (``max_keep_ckpts=1``) leaves no complete checkpoint,
or an empty ``last_checkpoint``, and nothing to ``--resume`` from. Here the
new checkpoint is written under a temporary name and renamed into place,
``last_checkpoint`` is replaced the same way, and only then are old
checkpoints deleted. Non-local backends keep mmengine's behaviour.

So a save needs free space for one checkpoint more than ``max_keep_ckpts``
while it is written. When the disk is full the save fails cleanly: its
partial file is removed, the previous checkpoint and ``last_checkpoint``
stay as they were, and the error says how many bytes a save needs.
"""

import os
import os.path as osp
import shutil

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ..checkpoint import remove_interrupted_saves, write_atomically, write_text_atomically
from .work_dir_lock import lock_work_dir


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) that never leaves a work dir
    without a complete checkpoint that ``last_checkpoint`` names."""

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and self._is_local():
            # A no-op when tools/train.py already holds the lock; otherwise it
            # keeps a Runner built directly from deleting a live run's save.
            lock_work_dir(runner.work_dir)
            remove_interrupted_saves(self.out_dir, runner.logger)

    def _is_local(self) -> bool:
        return isinstance(self.file_backend, LocalBackend)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        if not self._is_local():
            return super()._save_checkpoint_with_step(runner, step, meta)
        stale = []
        previous_ids = list(self.keep_ckpt_ids) if self.max_keep_ckpts > 0 else None
        previous_ckpt = getattr(self, 'last_ckpt', None)
        # keep_ckpt_ids exists only with max_keep_ckpts > 0; a step saved twice
        # (latest and best in one epoch) is counted once.
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        new_ckpt = self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        if not is_main_process():
            return  # Runner.save_checkpoint writes on the main process only

        def save(partial: str) -> None:
            runner.save_checkpoint(
                self.out_dir,
                osp.relpath(partial, self.out_dir),
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args,
            )

        try:
            write_atomically(
                new_ckpt,
                save,
                lambda error, written: self._save_failure(new_ckpt, previous_ckpt, written, error),
            )
            write_text_atomically(
                osp.join(runner.work_dir, 'last_checkpoint'),
                new_ckpt,
                lambda error, _: self._save_failure(new_ckpt, previous_ckpt, 0, error),
            )
        except OSError:
            self.last_ckpt = previous_ckpt
            if previous_ids is not None:
                self.keep_ckpt_ids.clear()
                self.keep_ckpt_ids.extend(previous_ids)
                runner.message_hub.update_info('keep_ckpt_ids', previous_ids)
            if previous_ckpt is not None:
                runner.message_hub.update_info('last_ckpt', previous_ckpt)
            raise
        for old_step in stale:
            old = osp.join(self.out_dir, self.filename_tmpl.format(old_step))
            if osp.isfile(old):
                os.remove(old)

    def _save_failure(self, new_ckpt, previous_ckpt, written, error) -> str:
        """What failed, what was kept, and how much free space a save needs."""
        if previous_ckpt is not None and osp.isfile(previous_ckpt):
            size = osp.getsize(previous_ckpt)
            need = f'about {size} bytes free (the size of {osp.basename(previous_ckpt)})'
            kept = f'{previous_ckpt} is still the latest complete checkpoint'
        else:
            need = f'more than the {written} bytes written before it failed'
            kept = 'no complete checkpoint exists yet'
        free = shutil.disk_usage(self.out_dir).free
        keep = self.max_keep_ckpts if self.max_keep_ckpts > 0 else 'all'
        return (
            f'saving checkpoint {new_ckpt} failed ({error.strerror or error}); its partial '
            f'file was removed and {kept}. A save writes the new checkpoint before deleting '
            f'the oldest, so it needs room for one checkpoint more than max_keep_ckpts '
            f'({keep}): {need}, and {free} bytes are free in {self.out_dir}. Free space, '
            'then resume with --resume.'
        )


def use_atomic_checkpoint_hook(cfg) -> None:
    """Swap the config's stock ``CheckpointHook`` for :class:`AtomicCheckpointHook`
    (the project's tools do this for every config)."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if hook is not None and hook.get('type') in ('CheckpointHook', CheckpointHook):
        hook['type'] = 'AtomicCheckpointHook'
