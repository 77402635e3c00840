from detr_ft.cli import main

raise SystemExit(main())
