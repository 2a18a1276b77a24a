"""``python -m wmtp_jax.data.synthetic --out DIR [flags]``: runs ``dataset.main``."""

from wmtp_jax.data.synthetic.dataset import main

if __name__ == "__main__":
  main()
