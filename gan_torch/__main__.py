from gan_torch.cli import main

main()
