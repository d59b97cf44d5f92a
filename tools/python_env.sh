# Sourced by the launch scripts: PY = $PYTHON, else the repo's .venv python,
# else python.
if [ -n "$PYTHON" ]; then
    PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY=python
fi
