from albingress.cli import main

raise SystemExit(main())
