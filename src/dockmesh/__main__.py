from dockmesh.cli.fast import main

main()
