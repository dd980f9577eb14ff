from finetune_mlx.cli import main

main()
