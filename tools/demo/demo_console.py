"""Console filter for tools/demo/demo.sh: pass training and test progress through,
keep the long dumps out of the console.

    bash tools/dist_train.sh ... 2>&1 | tee full.log | python tools/demo/demo_console.py

mmengine logs the whole config, the system environment and the hook order at
start-up, the optimizer constructor one line per parameter, and pycocotools
prints its tables at every evaluation: about a thousand lines that bury the
progress lines (epoch, iteration, ETA, loss, metrics). They stay in the
work dir's log file (and in the ``tee`` copy); this filter drops them from the
console, together with Python warnings from the libraries, and prints a
one-line count at the end. Errors, tracebacks and anything it does not
recognise pass through unchanged.
"""

import argparse
import re
import sys
from collections import Counter
from typing import Iterable, Iterator, Optional

# An mmengine log record: "11/24 13:48:37 - mmengine - INFO - message".
RECORD = re.compile(r'^\d\d/\d\d \d\d:\d\d:\d\d - \S+ - (\w+) - (.*)$')
ANSI = re.compile(r'\x1b\[[0-9;]*m')
# Lines that always pass and end any block being dropped.
ALARM = re.compile(r'Traceback|Error|Exception|FAILED|Killed|\[rank\d+\]|^=+$')
# A Python warning as printed by the warnings module: "file.py:12: UserWarning: ...".
WARNING = re.compile(r'^\S+:\d+: \w*Warning: ')

# Records whose continuation lines (the multi-line message) are dropped too.
BLOCK_RECORDS = {
    # mmengine's environment report and mmseg's per-class IoU table start with '\n'.
    '': 'environment and metric tables',
    'Config:': 'config',
    'Hooks will be executed in the following order:': 'hook order',
}
# Single records dropped, by the start of their message.
DROPPED_RECORDS = (
    ('paramwise_options -- ', 'optimizer settings'),
    ('Evaluating bbox...', 'evaluation tables'),
    ('Evaluating segm...', 'evaluation tables'),
    ('bbox_mAP_copypaste', 'evaluation tables'),
    ('segm_mAP_copypaste', 'evaluation tables'),
    ('per class results:', 'environment and metric tables'),
    ('"FileClient" will be deprecated', 'library warnings'),
    ('"HardDiskBackend" is the alias', 'library warnings'),
)
# Plain lines printed by pycocotools and mmseg's IoUMetric.
CHATTER = re.compile(
    r'^(loading annotations into memory\.\.\.|Done \(t=[\d.]+s\)|creating index\.\.\.|'
    r'index created!|Loading and preparing results\.\.\.|DONE \(t=[\d.]+s\)\.?|'
    r'Running per image evaluation\.\.\.|Evaluate annotation type \*\w+\*|'
    r'Accumulating evaluation results\.\.\.|'
    r' Average (Precision|Recall) +\((AP|AR)\) @\[.*)$'
)


class ConsoleFilter:
    """Decides line by line what reaches the console; counts what it drops."""

    def __init__(self):
        self.dropping: Optional[str] = None  # kind of the block being dropped
        self.dropped: Counter = Counter()

    def feed(self, line: str) -> Optional[str]:
        """Return ``line`` if it should be shown, else None."""
        text = ANSI.sub('', line.rstrip('\n'))
        record = RECORD.match(text)
        if record is None and ALARM.search(text):
            self.dropping = None
            return line
        if record is not None:
            self.dropping = None
            message = record.group(2)
            if message in BLOCK_RECORDS:
                self.dropping = BLOCK_RECORDS[message]
                self.dropped[self.dropping] += 1
                return None
            for start, kind in DROPPED_RECORDS:
                if message.startswith(start):
                    self.dropped[kind] += 1
                    return None
            return line
        if WARNING.match(text):
            self.dropping = 'library warnings'
            self.dropped[self.dropping] += 1
            return None
        if self.dropping is not None:
            self.dropped[self.dropping] += 1
            if self.dropping == 'library warnings' and not text.strip():
                self.dropping = None
            return None
        if CHATTER.match(text):
            self.dropped['evaluation tables'] += 1
            return None
        return line

    def run(self, lines: Iterable[str]) -> Iterator[str]:
        """Filter a stream of lines."""
        for line in lines:
            shown = self.feed(line)
            if shown is not None:
                yield shown

    def report(self) -> str:
        """One line saying what was kept out of the console."""
        if not self.dropped:
            return ''
        parts = ', '.join(f'{kind} {count}' for kind, count in self.dropped.items())
        return f'(lines kept out of the console: {parts})'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--full-log', help='where the unfiltered output is, named in the report')
    args = parser.parse_args(argv)
    console = ConsoleFilter()
    for line in console.run(iter(sys.stdin.readline, '')):
        sys.stdout.write(line)
        sys.stdout.flush()
    report = console.report()
    if report:
        where = f'; all of it is in {args.full_log}' if args.full_log else ''
        print(report[:-1] + where + ')', flush=True)


if __name__ == '__main__':
    main()
