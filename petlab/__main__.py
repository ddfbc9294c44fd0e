from petlab.cli import main

raise SystemExit(main())
