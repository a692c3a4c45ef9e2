from connector.cli import main

main(prog_name="capillary-aep")
