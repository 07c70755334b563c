// Takes docs/mlflow-compare.png: the MLflow compare view of two runs, in headless Chromium.
//
//   npm install --prefix /tmp/pw playwright-core     # once; the browser is Debian's: apt-get install chromium
//   mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000 &
//   NODE_PATH=/path/to/playwright/node_modules node docs/mlflow-compare-screenshot.js \
//     'http://127.0.0.1:5000/#/compare-runs?runs=["<run id>","<run id>"]&experiments=["<experiment id>"]' \
//     docs/mlflow-compare.png [param]
//
// Shows a param (the third argument, e.g. prepare.context; lr when left out) against dev and test F1
// (conlleval) in the parallel-coordinates plot, and only the params and metrics that differ.
const { chromium } = require('playwright-core');

(async () => {
  const [url, out, param = 'lr'] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1750 } });
  await page.goto(url);
  await page.getByText(/Comparing \d+ Runs/).waitFor({ timeout: 60000 });  // the React app has rendered
  await page.waitForTimeout(3000);
  const closeAssistant = page.locator('button[aria-label="Close"]');
  if (await closeAssistant.count()) await closeAssistant.first().click();
  // The params select starts with the params that differ; leave only `param` in it.
  const params = page.locator('.du-bois-light-select').first();
  const exact = new RegExp(`^${param.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
  const chosen = () => params.locator('.du-bois-light-select-selection-item');
  if (!(await chosen().filter({ hasText: exact }).count())) {
    await params.locator('.du-bois-light-select-selector').click();
    await page.keyboard.type(param);
    await page.locator(`.du-bois-light-select-item-option[title="${param}"]`).click();
    await page.keyboard.press('Escape');
  }
  for (;;) {
    const others = chosen().filter({ hasNotText: exact });
    if (!(await others.count())) break;
    await others.first().locator('.du-bois-light-select-selection-item-remove').click();
  }
  const metrics = page.locator('.du-bois-light-select').filter({ hasText: 'train_loss' }).last();
  for (const metric of ['dev.conlleval.f1', 'test.conlleval.f1']) {
    await metrics.locator('.du-bois-light-select-selector').click();
    await page.keyboard.type(metric);
    await page.locator(`.du-bois-light-select-item-option[title="${metric}"]`).click();
    await page.keyboard.press('Escape');
  }
  await metrics.locator('.du-bois-light-select-selection-item').filter({ hasText: 'train_loss' })
    .locator('.du-bois-light-select-selection-item-remove').click();
  const diffOnly = page.getByText('Show diff only');
  for (let i = 0; i < await diffOnly.count(); i++) await diffOnly.nth(i).click();
  // The toggles scroll the page's inner container; back to the top before the picture.
  await page.evaluate(() => document.querySelectorAll('*').forEach((e) => { if (e.scrollTop) e.scrollTop = 0; }));
  await page.waitForTimeout(2000);
  await page.screenshot({ path: out });
  await browser.close();
})();
