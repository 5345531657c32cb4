"""`python -m fedbiobert.finetune` / `fedbiobert-finetune`: see cli.py."""
from fedbiobert.finetune.cli import main

if __name__ == "__main__":
    main()
