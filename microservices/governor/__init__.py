"""P3.1 Step 2: the governor, which consumes execution plans and writes a permit with a downsize hint for each."""
