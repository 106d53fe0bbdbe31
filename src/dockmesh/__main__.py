from dockmesh.cli.main import main

main()
