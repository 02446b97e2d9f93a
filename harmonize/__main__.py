from covid_cxr_unified.harmonize.cli import main

main()
