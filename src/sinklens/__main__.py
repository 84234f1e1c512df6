from sinklens.cli import main

raise SystemExit(main())
